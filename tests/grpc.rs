//! gRPC through tandem with a real gRPC library on both sides (grpcio, driven by
//! `tests/fixtures/grpc_peer.py`): what a gRPC client sees when tandem fails (its own answer in
//! gRPC's form: the status from the reason code, tandem's message), what it sees from the app
//! (the app's status, untouched), and the `grpc_status` of each access-log line.
//!
//! The Python that runs the peer is `python3` on `PATH` with grpcio importable (CI installs it in
//! a venv it puts first on `PATH`). Without it these tests say so and pass, except under CI
//! (`CI` set), where a missing grpcio fails them.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use support::{json_lines, Proc, TempDir};
use tandem::config::{AppProtocol, Config, Human};

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/grpc_peer.py");

/// Whether grpcio can be used; panics under CI when it cannot.
fn have_grpcio() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import grpc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "CI: python3 with grpcio is not on PATH (.ci/run installs it)");
        println!("skipped: python3 with grpcio is not on PATH (pip install grpcio)");
    }
    ok
}

/// A grpcio server on a free port, and its address (read from its log).
async fn grpc_app() -> (Proc, SocketAddr) {
    let mut p = Proc::spawn("grpc-app", "python3", &["-u", PEER, "serve"], &[]);
    let line = p.logged("listening on ").await;
    let port: u16 = line.rsplit(' ').next().and_then(|p| p.trim().parse().ok()).expect("port");
    (p, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// What a grpcio client got from one unary call.
#[derive(Debug, serde::Deserialize)]
struct Called {
    code: u16,
    name: String,
    details: String,
    body: String,
}

/// One unary call of `method` through `addr`, with `request_id` as its `x-request-id`.
async fn call(addr: SocketAddr, method: &str, request_id: &str) -> Called {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.args([PEER, "call", &addr.to_string(), method, request_id]).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the call ends within 60 s")
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: stdout {text:?}, stderr {:?}", String::from_utf8_lossy(&out.stderr)))
}

/// tandem in front of `app`, with the JSON access log in `dir`.
async fn tandem(
    app: SocketAddr,
    protocol: AppProtocol,
    dir: &Path,
    tweak: impl FnOnce(&mut Config),
) -> tandem::app::Running {
    let mut c = support::config_with_log(app, &dir.join("access.log"));
    c.inbound.app_protocol = protocol;
    tweak(&mut c);
    support::proxy(c).await
}

/// The access-log line of `request_id`.
async fn logged(p: &tandem::app::Running, dir: &Path, request_id: &str) -> serde_json::Value {
    p.telemetry().flush_access_log().await;
    json_lines(&dir.join("access.log"))
        .into_iter()
        .find(|l| l["request_id"] == request_id)
        .unwrap_or_else(|| panic!("no access-log line for {request_id}"))
}

#[tokio::test]
async fn an_app_that_is_down_is_unavailable_with_tandems_message() {
    if !have_grpcio() {
        return;
    }
    let (_socket, app) = support::refusing_port();
    let dir = TempDir::new("grpc-down");
    let p = tandem(app, AppProtocol::Http2, &dir.0, |_| {}).await;
    let got = call(p.inbound_addr, "Echo", "g-down").await;
    assert_eq!((got.code, got.name.as_str()), (14, "UNAVAILABLE"), "{got:?}");
    assert_eq!(got.details, format!("upstream connect failed (UF): connection refused by {app}"));
    let line = logged(&p, &dir.0, "g-down").await;
    assert_eq!((line["response_code"].as_u64(), line["response_flags"].as_str()), (Some(200), Some("UF")), "{line}");
    assert_eq!(line["grpc_status"], 14, "{line}");
}

#[tokio::test]
async fn an_app_slower_than_the_response_timeout_is_deadline_exceeded() {
    if !have_grpcio() {
        return;
    }
    let (_app_proc, app) = grpc_app().await;
    let dir = TempDir::new("grpc-slow");
    let p = tandem(app, AppProtocol::Http2, &dir.0, |c| {
        c.inbound.timeouts.response = Human::new(Duration::from_millis(300));
    })
    .await;
    let got = call(p.inbound_addr, "Slow", "g-slow").await;
    assert_eq!((got.code, got.name.as_str()), (4, "DEADLINE_EXCEEDED"), "{got:?}");
    assert_eq!(got.details, format!("upstream timed out (UT): no response from {app} within 300ms"));
    assert_eq!(logged(&p, &dir.0, "g-slow").await["grpc_status"], 4);
}

#[tokio::test]
async fn calls_reach_a_grpc_app_and_its_statuses_are_logged() {
    if !have_grpcio() {
        return;
    }
    let (_app_proc, app) = grpc_app().await;
    let dir = TempDir::new("grpc-app");
    let p = tandem(app, AppProtocol::Http2, &dir.0, |_| {}).await;

    let ok = call(p.inbound_addr, "Echo", "g-ok").await;
    assert_eq!((ok.code, ok.body.as_str()), (0, "ping Echo"), "{ok:?}");
    let missing = call(p.inbound_addr, "Missing", "g-missing").await;
    assert_eq!((missing.code, missing.details.as_str()), (5, "no such order"), "the app's own status: {missing:?}");

    let line = logged(&p, &dir.0, "g-ok").await;
    assert_eq!((line["grpc_status"].as_u64(), line["response_flags"].as_str()), (Some(0), Some("-")), "{line}");
    assert_eq!(line["protocol"], "HTTP/2");
    let line = logged(&p, &dir.0, "g-missing").await;
    assert_eq!((line["grpc_status"].as_u64(), line["response_code"].as_u64()), (Some(5), Some(200)), "{line}");
}

#[tokio::test]
async fn a_grpc_app_taken_for_http1_is_internal_and_the_message_names_app_protocol() {
    if !have_grpcio() {
        return;
    }
    let (_app_proc, app) = grpc_app().await;
    let dir = TempDir::new("grpc-h1");
    let p = tandem(app, AppProtocol::Http1, &dir.0, |_| {}).await;
    let got = call(p.inbound_addr, "Echo", "g-h1").await;
    assert_eq!((got.code, got.name.as_str()), (13, "INTERNAL"), "{got:?}");
    assert!(
        got.details.starts_with(&format!("upstream protocol error (UPE): {app} sent an invalid response"))
            && got.details.contains("`app_protocol: http2`"),
        "{got:?}"
    );
    assert_eq!(logged(&p, &dir.0, "g-h1").await["grpc_status"], 13);
}

#[tokio::test]
async fn a_plain_request_has_no_grpc_status_in_its_line() {
    // No Python needed: the key is absent for a request that is not gRPC, also when it fails.
    let app = support::dead_addr();
    let dir = TempDir::new("grpc-none");
    let p = tandem(app, AppProtocol::Http1, &dir.0, |_| {}).await;
    let (status, ..) = support::request(
        "POST",
        &format!("http://{}/t.Test/Echo", p.inbound_addr),
        &[("x-request-id", "plain"), ("content-type", "application/grpc-web")],
        "",
    )
    .await;
    assert_eq!(status, 502, "grpc-web is answered as HTTP");
    let line = logged(&p, &dir.0, "plain").await;
    assert!(line.get("grpc_status").is_none(), "{line}");
}
