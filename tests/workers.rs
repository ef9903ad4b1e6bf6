//! Inbound workers: one event loop per worker thread, each with its own `SO_REUSEPORT` listener
//! and its own keep-alive pool to the app, sharing the drain, the connection tracker and
//! `max_in_flight`.

mod support;

use std::time::Duration;

async fn start(cfg: tandem::config::Config, workers: usize) -> tandem::app::Running {
    tandem::app::start_with_workers(cfg, None, workers).await.expect("proxy starts")
}

const CLOSE: &[u8] = b"GET /w HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn every_worker_accepts_and_keeps_its_own_app_pool() {
    let echo = support::echo().await;
    let proxy = start(support::config(echo.addr), 3).await;
    assert_eq!(proxy.app_idle_connections().len(), 3);
    // 48 connections from 48 source ports: the kernel spreads them over the three listeners
    // (the chance that one listener gets none is about 1 in 10^8).
    let mut answers = Vec::new();
    for _ in 0..48 {
        let addr = proxy.inbound_addr;
        answers.push(tokio::spawn(async move { support::raw(addr, CLOSE, Duration::from_secs(10)).await }));
    }
    for a in answers {
        let out = a.await.expect("request task");
        assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    }
    // Each worker returned its app connections to its own pool.
    let idle = support::wait_for("an idle app connection in every worker's pool", Duration::from_secs(10), || {
        let idle = proxy.app_idle_connections();
        async move { idle.iter().all(|&n| n >= 1).then_some(idle) }
    })
    .await;
    assert!(idle.iter().sum::<usize>() <= 48, "{idle:?}");
    let m = support::metrics(&proxy);
    assert_eq!(
        support::metric_value(&m, &["tandem_http_requests_total{", "direction=\"inbound\"", "status_code=\"200\""]),
        Some(48.0),
        "every worker reports to the one registry: {m}"
    );
}

#[tokio::test]
async fn one_worker_binds_no_shared_listener() {
    // With one worker the inbound address stays exclusive: a second bind of it fails.
    let echo = support::echo().await;
    let proxy = start(support::config(echo.addr), 1).await;
    assert_eq!(proxy.app_idle_connections().len(), 1);
    assert!(tandem::listener::accept::bind_shared(proxy.inbound_addr).is_err());
}

#[tokio::test]
async fn a_taken_address_fails_every_worker_count() {
    let echo = support::echo().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut cfg = support::config(echo.addr);
    cfg.inbound.listen = tandem::config::Human::new(taken.local_addr().expect("addr"));
    for workers in [1, 2] {
        let err = tandem::app::start_with_workers(cfg.clone(), None, workers).await.err().expect("bind fails");
        assert!(err.to_string().starts_with("inbound.listen: cannot bind"), "{err}");
    }
}

#[tokio::test]
async fn the_drain_answers_requests_in_flight_on_every_worker() {
    let echo = support::echo().await;
    let proxy = start(support::config(echo.addr), 2).await;
    let shutdown = proxy.shutdown_handle();
    let slow = b"GET /slow?delay=400ms HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut answers = Vec::new();
    for _ in 0..16 {
        let addr = proxy.inbound_addr;
        answers.push(tokio::spawn(async move { support::raw(addr, slow, Duration::from_secs(10)).await }));
    }
    support::wait_for("16 requests in flight", Duration::from_secs(10), || {
        let m = support::metrics(&proxy);
        let v = support::metric_value(&m, &["tandem_http_requests_in_flight{", "direction=\"inbound\""]);
        async move { (v == Some(16.0)).then_some(()) }
    })
    .await;
    shutdown.trigger();
    let waited = tokio::spawn(proxy.wait());
    for a in answers {
        let out = a.await.expect("request task");
        assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    }
    tokio::time::timeout(Duration::from_secs(10), waited).await.expect("the drain ends").expect("wait task");
}

#[tokio::test]
async fn every_worker_forwards_the_apps_outbound_calls() {
    let echo = support::echo().await;
    let proxy = start(support::config(echo.addr), 2).await;
    // With two workers the outbound address is shared too: one more SO_REUSEPORT bind of it works,
    // and it is the same address the loop check knows.
    assert!(tandem::listener::accept::bind_shared(proxy.outbound_addr).is_ok());
    let call = format!("GET http://{}/out HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", echo.addr, echo.addr);
    let mut answers = Vec::new();
    for _ in 0..32 {
        let (addr, call) = (proxy.outbound_addr, call.clone());
        answers.push(tokio::spawn(async move { support::raw(addr, call.as_bytes(), Duration::from_secs(10)).await }));
    }
    for a in answers {
        let out = a.await.expect("request task");
        assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    }
    let looped = format!("GET /loop HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", proxy.outbound_addr);
    for _ in 0..8 {
        let out = support::raw(proxy.outbound_addr, looped.as_bytes(), Duration::from_secs(10)).await;
        assert!(out.starts_with("HTTP/1.1 403") && out.contains("NR"), "every worker refuses the loop: {out}");
    }
    let m = support::metrics(&proxy);
    assert_eq!(
        support::metric_value(&m, &["tandem_http_requests_total{", "direction=\"outbound\"", "status_code=\"200\""]),
        Some(32.0),
        "{m}"
    );
}
