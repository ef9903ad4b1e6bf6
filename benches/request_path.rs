//! Criterion benches of tandem's request path, in-process, through the public API: a request sent
//! through the proxy stack to the in-process echo app against the same request sent to the app
//! directly (HTTP/1.1 and h2c), and the per-request header rewriting and access-log formatting.
//!
//! Everything runs on one current-thread runtime, as `tandem run --workers 1` does, and the figure
//! is that thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`, syscalls included): the whole cost of one
//! proxied request on one core, client, proxy and app together, and not the time the thread spent
//! waiting for a core on a busy machine. `tandem` minus `direct` is what the proxy adds.
//!
//! `cargo bench --bench request_path` (add `-- --quick` for a short run).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::{header, HeaderMap, HeaderValue, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::time::Duration;
use tandem::config::{Config, Human};

type BenchClient = Client<HttpConnector, Empty<Bytes>>;

/// A configuration like the tests' one: every listener on 127.0.0.1:0, `app` as the app.
fn config(app: SocketAddr, access_log: &str) -> Config {
    let mut c = Config::default();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    c.inbound.listen = Human::new(any);
    c.outbound.listen = Human::new(any);
    c.admin.listen = Human::new(any);
    c.inbound.app = Human::new(app);
    c.access_log.destination = access_log.into();
    c.shutdown.drain_timeout = Human::new(Duration::from_secs(1));
    c
}

fn h1() -> BenchClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2() -> BenchClient {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

/// One GET, body read to its end; panics on anything but 200 (a bench must not measure errors).
async fn get(client: &BenchClient, uri: &http::Uri) -> usize {
    let req = Request::get(uri.clone())
        .header(header::USER_AGENT, "tandem-bench")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = client.request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.expect("body").to_bytes().len()
}

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn request_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dir = std::env::temp_dir().join(format!("tandem-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let log_path = dir.join("access.log");
    let (echo, plain, logged) = rt.block_on(async {
        let echo = tandem::app::Echo::start("127.0.0.1:0".parse().expect("addr")).await.expect("echo starts");
        let plain = tandem::app::start(config(echo.addr, "off"), None).await.expect("proxy starts");
        let logged = tandem::app::start(config(echo.addr, &log_path.to_string_lossy()), None)
            .await
            .expect("proxy with access log starts");
        (echo, plain, logged)
    });
    let uri = |addr: SocketAddr, path: &str| -> http::Uri { format!("http://{addr}{path}").parse().expect("uri") };

    for (proto, client) in [("h1", h1()), ("h2c", h2())] {
        let mut g = c.benchmark_group(format!("request_path/{proto}"));
        g.throughput(Throughput::Elements(1));
        for (name, addr) in
            [("direct", echo.addr), ("tandem", plain.inbound_addr), ("tandem_access_log", logged.inbound_addr)]
        {
            for (size, path) in [("echo", "/bench?x=1"), ("16KiB", "/bench?size=16KiB")] {
                let u = uri(addr, path);
                // Warm the pools (client → proxy, proxy → app) outside the measurement.
                rt.block_on(get(&client, &u));
                g.bench_function(format!("{name}/{size}"), |b| {
                    b.iter_custom(|iters| {
                        let start = thread_cpu_time();
                        rt.block_on(async {
                            for _ in 0..iters {
                                get(&client, &u).await;
                            }
                        });
                        thread_cpu_time().saturating_sub(start)
                    })
                });
            }
        }
        g.finish();
    }

    rt.block_on(async {
        plain.shutdown_handle().trigger();
        logged.shutdown_handle().trigger();
        echo.stop();
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// A request head as a browser or SDK sends it, with a hop-by-hop field to strip.
fn typical_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("reviews.default.svc.cluster.local:9080"));
    h.insert(header::USER_AGENT, HeaderValue::from_static("Mozilla/5.0 (X11; Linux x86_64) tandem-bench/1.0"));
    h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip, deflate, br"));
    h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    h.insert("traceparent", HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    h
}

fn rewrite(c: &mut Criterion) {
    let peer: SocketAddr = "10.1.2.3:45678".parse().expect("addr");
    let mut g = c.benchmark_group("rewrite");
    g.bench_function("strip_forwarded_request_id", |b| {
        b.iter_batched_ref(
            typical_headers,
            |h| {
                tandem::proxy::headers::strip_hop_by_hop(h, false);
                tandem::proxy::headers::set_forwarded(h, peer, "http");
                tandem::proxy::headers::ensure_request_id(h)
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("new_request_id", |b| b.iter(tandem::proxy::headers::new_request_id));
    g.finish();

    let req = Request::get("/productpage?u=normal").body(()).expect("request");
    let (mut parts, ()) = req.into_parts();
    parts.headers = typical_headers();
    let mut record =
        tandem::telemetry::record::RequestRecord::start(tandem::base::reason::Direction::Inbound, peer, &parts);
    record.response_code = 200;
    record.bytes_sent = 5_120;
    record.upstream_host = Some("127.0.0.1:8080".parse().expect("addr"));
    record.request_id = Some(tandem::proxy::headers::new_request_id());
    let mut out = Vec::with_capacity(4096);
    c.bench_function("access_log/format_json", |b| {
        b.iter(|| {
            out.clear();
            tandem::telemetry::access_log::format_json(&record, &mut out);
            out.len()
        })
    });
}

criterion_group!(benches, request_path, rewrite);
criterion_main!(benches);
