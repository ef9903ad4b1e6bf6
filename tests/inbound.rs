//! Inbound proxying end to end: HTTP/1.1 and h2c in, HTTP/1.1 and h2c to the app, streaming both
//! ways, trailers, WebSocket, header rewriting, and a graceful stop of the real binary.

mod support;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{ChannelBody, Frames};
use tandem::config::AppProtocol;

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn http1_get_reaches_the_app_with_host_path_and_query() {
    let echo = support::echo().await;
    let proxy = support::proxy(support::config(echo.addr)).await;
    let (status, headers, body) = support::get(&format!("http://{}/hello/there?x=1&y=2", proxy.inbound_addr)).await;
    assert_eq!(status, 200);
    assert!(headers.get("x-tandem-error").is_none());
    let j = json(&body);
    assert_eq!(j["method"], "GET");
    assert_eq!(j["path"], "/hello/there");
    assert_eq!(j["query"], "x=1&y=2");
    assert_eq!(j["version"], "HTTP/1.1");
    assert_eq!(j["headers"]["host"], proxy.inbound_addr.to_string(), "Host is preserved");
}

#[tokio::test]
async fn http1_post_body_reaches_the_app_and_comes_back() {
    let echo = support::echo().await;
    let proxy = support::proxy(support::config(echo.addr)).await;
    let url = format!("http://{}/upload?echo_body=1", proxy.inbound_addr);
    let req = http::Request::post(&url).body(Full::new(Bytes::from_static(b"hello tandem"))).expect("req");
    let (status, _, body) = support::send(&support::h1(), req).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"hello tandem");

    let url = format!("http://{}/form", proxy.inbound_addr);
    let req = http::Request::post(&url).body(Full::new(Bytes::from_static(b"a=1"))).expect("req");
    let (status, _, body) = support::send(&support::h1(), req).await;
    assert_eq!(status, 200);
    let j = json(&body);
    assert_eq!(j["method"], "POST");
    assert_eq!(j["headers"]["content-length"], "3");
}

/// The app echoes each request-body chunk as soon as it arrives and tells the test about the
/// first one; the client holds the rest of its body back until it has seen both the app's
/// signal and the first echoed bytes, so neither direction can be buffered whole.
#[tokio::test]
async fn a_large_body_streams_both_ways() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 256; // 16 MiB
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<usize>();
    let first_tx = Arc::new(Mutex::new(Some(first_tx)));
    let app = support::app(false, move |req: http::Request<hyper::body::Incoming>| {
        let first_tx = first_tx.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
            let mut body = req.into_body();
            tokio::spawn(async move {
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data() {
                        if let Some(t) = first_tx.lock().expect("lock").take() {
                            let _ = t.send(data.len());
                        }
                        if tx.send(data).await.is_err() {
                            break;
                        }
                    }
                }
            });
            http::Response::new(ChannelBody(rx))
        }
    })
    .await;
    let proxy = support::proxy(support::config(app)).await;

    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    let client: Client<_, ChannelBody> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("http://{}/stream", proxy.inbound_addr)).body(ChannelBody(rx)).expect("req");
    let response = tokio::spawn(async move { client.request(req).await });
    let chunk = |i: usize| Bytes::from(vec![(i % 251) as u8; CHUNK]);

    tx.send(chunk(0)).await.expect("send the first chunk");
    let wait = Duration::from_secs(10);
    let seen = tokio::time::timeout(wait, first_rx).await.expect("the app sees the first bytes").expect("signal");
    assert!(seen > 0);
    let resp = tokio::time::timeout(wait, response).await.expect("response head").expect("task").expect("response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0usize;
    let mut sum = 0u64;
    while received == 0 {
        let frame = tokio::time::timeout(wait, body.frame()).await.expect("first echoed bytes").expect("frame");
        if let Ok(d) = frame.expect("frame ok").into_data() {
            received += d.len();
            sum += d.iter().map(|&b| u64::from(b)).sum::<u64>();
        }
    }
    // Only now does the client send the rest.
    let sender = tokio::spawn(async move {
        for i in 1..CHUNKS {
            tx.send(chunk(i)).await.expect("send");
        }
    });
    while let Some(frame) = tokio::time::timeout(wait, body.frame()).await.expect("echo keeps flowing") {
        if let Ok(d) = frame.expect("frame ok").into_data() {
            received += d.len();
            sum += d.iter().map(|&b| u64::from(b)).sum::<u64>();
        }
    }
    sender.await.expect("sender");
    assert_eq!(received, CHUNK * CHUNKS);
    let want: u64 = (0..CHUNKS).map(|i| (i % 251) as u64 * CHUNK as u64).sum();
    assert_eq!(sum, want, "every byte came back");
}

#[tokio::test]
async fn h2c_prior_knowledge_reaches_an_http1_app() {
    let echo = support::echo().await;
    let proxy = support::proxy(support::config(echo.addr)).await;
    let req = http::Request::get(format!("http://{}/h2?x=1", proxy.inbound_addr))
        .header("x-from", "h2")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let resp = support::h2().request(req).await.expect("response");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let j = json(&body);
    assert_eq!(j["version"], "HTTP/1.1", "the app speaks HTTP/1.1");
    assert_eq!(j["path"], "/h2");
    assert_eq!(j["headers"]["host"], proxy.inbound_addr.to_string(), ":authority arrives as Host");
    assert_eq!(j["headers"]["x-from"], "h2");
}

/// An h2c app that answers with data then trailers, declaring them in `Trailer` or not; it
/// records the version and `TE` it was sent.
async fn trailers_app(declare: Option<&'static str>, content_type: &'static str) -> (std::net::SocketAddr, Seen) {
    let seen: Seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let app = support::app(true, move |req: http::Request<hyper::body::Incoming>| {
        *s.lock().expect("lock") = Some((req.version(), req.headers().get(header::TE).cloned()));
        async move {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            trailers.insert("grpc-message", http::HeaderValue::from_static("fine"));
            trailers.insert("x-checksum", http::HeaderValue::from_static("abc"));
            let frames = VecDeque::from([
                http_body::Frame::data(Bytes::from_static(b"first ")),
                http_body::Frame::data(Bytes::from_static(b"second")),
                http_body::Frame::trailers(trailers),
            ]);
            let mut resp = http::Response::builder().header("content-type", content_type);
            if let Some(names) = declare {
                resp = resp.header(header::TRAILER, names);
            }
            resp.body(Frames(frames)).expect("resp")
        }
    })
    .await;
    (app, seen)
}

type Seen = Arc<Mutex<Option<(http::Version, Option<http::HeaderValue>)>>>;

/// An HTTP/1.1 request with `TE: trailers` through a proxy to `app` over h2c: the response's
/// body and trailers.
async fn h1_to_h2c(app: std::net::SocketAddr) -> (Bytes, http::HeaderMap) {
    let mut cfg = support::config(app);
    cfg.inbound.app_protocol = AppProtocol::Http2;
    let proxy = support::proxy(cfg).await;
    let req = http::Request::post(format!("http://{}/pkg.Service/Method", proxy.inbound_addr))
        .header(header::TE, "trailers")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .expect("req");
    let resp = support::h1().request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_11);
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().expect("trailers reach the HTTP/1.1 client");
    (collected.to_bytes(), trailers)
}

#[tokio::test]
async fn an_http1_client_gets_grpc_trailers_from_an_h2c_app() {
    // A gRPC app over h2 declares no trailers; tandem declares the gRPC ones for HTTP/1.1.
    let (app, seen) = trailers_app(None, "application/grpc+proto").await;
    let (body, trailers) = h1_to_h2c(app).await;
    assert_eq!(&body[..], b"first second");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "fine");
    let (version, te) = seen.lock().expect("lock").clone().expect("the app saw the request");
    assert_eq!(version, http::Version::HTTP_2, "the app is spoken to in h2c");
    assert_eq!(te.as_ref().map(|v| v.as_bytes()), Some(&b"trailers"[..]));

    // Any app that declares its trailers gets them through, whatever they are.
    let (app, _) = trailers_app(Some("x-checksum, grpc-status"), "text/plain").await;
    let (_, trailers) = h1_to_h2c(app).await;
    assert_eq!(trailers["x-checksum"], "abc");
    assert_eq!(trailers["grpc-status"], "0");
}

/// A WebSocket app that echoes text and binary messages; returns its address.
async fn ws_echo_app() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        break;
                    }
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    app
}

#[tokio::test]
async fn a_websocket_echo_works_through_the_proxy() {
    let app = ws_echo_app().await;
    let proxy = support::proxy(support::config(app)).await;
    let (mut ws, resp) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws", proxy.inbound_addr)).await.expect("handshake");
    assert_eq!(resp.status(), 101);
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::Text("hello through tandem".into())).await.expect("send text");
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("echo").expect("msg").expect("ok");
    assert_eq!(got, Message::Text("hello through tandem".into()));
    let blob: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    ws.send(Message::Binary(blob.clone().into())).await.expect("send binary");
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("echo").expect("msg").expect("ok");
    assert_eq!(got, Message::Binary(blob.into()));
    ws.close(None).await.expect("close");
}

#[tokio::test]
async fn an_open_websocket_is_a_connection_the_drain_waits_for_and_cuts_at_the_deadline() {
    use tokio_tungstenite::tungstenite::Message;
    let app = ws_echo_app().await;
    let mut cfg = support::config(app);
    cfg.shutdown.drain_timeout = tandem::config::Human::new(Duration::from_millis(800));
    let proxy = support::proxy(cfg).await;
    let telemetry = proxy.telemetry();
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws", proxy.inbound_addr)).await.expect("handshake");
    ws.send(Message::Text("one".into())).await.expect("send");
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("echo");
    let active = |t: &std::sync::Arc<tandem::telemetry::Telemetry>| {
        String::from_utf8_lossy(&t.metrics.render())
            .lines()
            .find(|l| l.starts_with("tandem_tcp_connections_active{direction=\"inbound\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<i64>().ok())
            .expect("gauge")
    };
    // The HTTP connection hands over to the tunnel (it ends as the upgrade completes); the tunnel
    // itself counts as the one open connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while active(&telemetry) != 1 {
        assert!(std::time::Instant::now() < deadline, "active connections: {}", active(&telemetry));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let stop = proxy.shutdown_handle();
    let waiting = tokio::spawn(proxy.wait());
    stop.trigger();
    // Through the drain the tunnel still carries messages: the drain waits for it.
    ws.send(Message::Text("two".into())).await.expect("send during the drain");
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("echo").expect("msg").expect("ok");
    assert_eq!(got, Message::Text("two".into()));
    assert!(!waiting.is_finished(), "the drain must wait for the open tunnel");
    // At the deadline it is cut, and the stop completes.
    tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("drain ends at the deadline").expect("join");
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("the tunnel is closed");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    assert_eq!(active(&telemetry), 0);
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let app = support::app(false, move |req: http::Request<hyper::body::Incoming>| {
        *s.lock().expect("lock") = Some(req.headers().clone());
        async move {
            http::Response::builder()
                .header(header::CONNECTION, "x-app-hop")
                .header("x-app-hop", "1")
                .header("keep-alive", "timeout=5")
                .header("proxy-connection", "keep-alive")
                .header("x-app-keep", "yes")
                .body(Full::new(Bytes::from_static(b"ok\n")))
                .expect("resp")
        }
    })
    .await;
    let proxy = support::proxy(support::config(app)).await;
    let req = http::Request::get(format!("http://{}/hop", proxy.inbound_addr))
        .header(header::CONNECTION, "keep-alive, x-client-hop")
        .header("x-client-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header(header::TE, "trailers, deflate")
        .header(header::UPGRADE, "something")
        .header("x-client-keep", "yes")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let (status, headers, _) = support::send(&support::h1(), req).await;
    assert_eq!(status, 200);

    let app_saw = seen.lock().expect("lock").clone().expect("the app saw the request");
    for gone in ["connection", "x-client-hop", "keep-alive", "proxy-connection", "upgrade", "transfer-encoding"] {
        assert!(!app_saw.contains_key(gone), "the app got {gone}: {app_saw:?}");
    }
    assert_eq!(app_saw[header::TE], "trailers", "TE keeps only trailers");
    assert_eq!(app_saw["x-client-keep"], "yes");

    for gone in ["connection", "x-app-hop", "keep-alive", "proxy-connection"] {
        assert!(!headers.contains_key(gone), "the client got {gone}: {headers:?}");
    }
    assert_eq!(headers["x-app-keep"], "yes");
}

#[tokio::test]
async fn forwarded_for_is_appended_request_id_kept_or_made_and_traceparent_untouched() {
    let echo = support::echo().await;
    let proxy = support::proxy(support::config(echo.addr)).await;
    let url = format!("http://{}/ids", proxy.inbound_addr);
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let req = http::Request::get(&url)
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-request-id", "client-id-42")
        .header("traceparent", traceparent)
        .body(Full::new(Bytes::new()))
        .expect("req");
    let (_, _, body) = support::send(&support::h1(), req).await;
    let h = &json(&body)["headers"];
    assert_eq!(h["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-request-id"], "client-id-42");
    assert_eq!(h["traceparent"], traceparent);

    let mut ids = Vec::new();
    for _ in 0..2 {
        let (_, _, body) = support::get(&url).await;
        let h = json(&body)["headers"].clone();
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert!(h.get("traceparent").is_none(), "no traceparent is made up");
        let id = h["x-request-id"].as_str().expect("a request id is generated").to_owned();
        assert_eq!(id.len(), 36, "{id}");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
}

/// The real binary: SIGTERM while a slow request is in flight lets it finish, then exits 0.
#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish() {
    let echo = support::echo().await;
    let (inbound, admin, outbound) = (support::free_addr(), support::free_addr(), support::free_addr());
    let mut child = tokio::process::Command::new(support::bin())
        .args(["run", "--app", &echo.addr.to_string()])
        .args(["--inbound", &inbound.to_string(), "--admin", &admin.to_string()])
        .args(["--outbound", &outbound.to_string(), "--access-log", "off", "--workers", "1"])
        .args(["--drain-timeout", "10s"])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tandem run");
    let pid = child.id().expect("pid");

    let ready = format!("http://{admin}/ready");
    support::wait_for("/ready to answer 200", Duration::from_secs(20), || {
        let ready = ready.clone();
        async move { support::try_get(&ready).await.filter(|(s, _)| *s == 200) }
    })
    .await;

    let slow = tokio::spawn(support::try_get_owned(format!("http://{inbound}/slow?delay=1500ms")));
    let metrics = format!("http://{admin}/metrics");
    support::wait_for("the slow request to be in flight", Duration::from_secs(10), || {
        let metrics = metrics.clone();
        async move {
            let (_, body) = support::try_get(&metrics).await?;
            let text = String::from_utf8_lossy(&body).into_owned();
            let v = support::metric_value(&text, &["tandem_http_requests_in_flight{", "direction=\"inbound\""]);
            (v == Some(1.0)).then_some(())
        }
    })
    .await;

    // SAFETY: kill(2) on the pid of a child this test spawned and still owns.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "SIGTERM sent");

    let (status, body) = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("slow request ends")
        .expect("task")
        .expect("the request in flight gets its answer");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.expect("tandem exits").expect("wait");
    assert_eq!(exit.code(), Some(0), "{exit:?}");
}
