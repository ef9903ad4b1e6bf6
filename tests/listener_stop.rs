//! How a listener stops without resetting a connection its client believes is open: at the stop
//! it drops new SYNs (`accept::refuse_new_handshakes`), takes every connection the kernel completed
//! for [`accept::HANDSHAKE_GRACE`], keeps the drain waiting meanwhile, and then closes, after which
//! a connection attempt is refused.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tandem::base::reason::Direction;
use tandem::echo::EchoService;
use tandem::lifecycle::shutdown::{Shutdown, Tracker};
use tandem::listener::accept::{self, ConnSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longer than a listener's grace, far shorter than the kernel's first SYN retransmission (1 s):
/// a connect still pending after this had its SYN dropped.
const SYN_DROPPED: Duration = Duration::from_millis(400);
const LIMIT: Duration = Duration::from_secs(10);

/// Connects with a bound: Ok(true) connected, Ok(false) still pending (SYN unanswered), Err the
/// kernel's answer (refused).
async fn try_connect(addr: SocketAddr, wait: Duration) -> std::io::Result<bool> {
    match tokio::time::timeout(wait, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(true),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(false),
    }
}

#[tokio::test]
async fn a_listener_refusing_new_handshakes_drops_syns_and_keeps_its_queue_and_connections() {
    refuses_new_handshakes_on("127.0.0.1:0".parse().expect("addr")).await;
}

#[tokio::test]
async fn the_same_on_ipv6() {
    let addr: SocketAddr = "[::1]:0".parse().expect("addr");
    if std::net::TcpListener::bind(addr).is_err() {
        println!("skipped: this machine has no IPv6 loopback (::1)");
        return;
    }
    refuses_new_handshakes_on(addr).await;
}

async fn refuses_new_handshakes_on(bind: SocketAddr) {
    let listener = accept::bind(bind).expect("bind");
    let addr = listener.local_addr().expect("addr");
    // One connection accepted before, one completed and queued before: neither is touched.
    let mut before = std::net::TcpStream::connect(addr).expect("connect");
    let (mut accepted, _) = listener.accept().await.expect("accept");
    let mut queued = std::net::TcpStream::connect(addr).expect("connect");
    queued.write_all(b"queued").expect("write");

    accept::refuse_new_handshakes(&listener).expect("filter attached");

    assert!(!try_connect(addr, SYN_DROPPED).await.expect("no answer"), "a new connection completed its handshake");
    let (mut late, _) = listener.accept().await.expect("the queued connection is still there");
    let mut buf = [0u8; 6];
    late.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"queued");
    late.write_all(b"answer").await.expect("write");
    queued.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"answer");
    // Segments of a connection accepted before the filter flow both ways.
    before.write_all(b"before").expect("write");
    accepted.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"before");
    accepted.write_all(b"reply!").await.expect("write");
    before.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"reply!");

    drop(listener);
    let refused = try_connect(addr, LIMIT).await.expect_err("the closed port answers");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
}

fn start(
    listener: tokio::net::TcpListener,
    shutdown: &Shutdown,
    tracker: &Arc<Tracker>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(accept::serve(
        listener,
        ConnSettings::internal(),
        Direction::Inbound,
        None,
        shutdown.drain(),
        tracker.clone(),
        accept::HyperServers::new(|_| EchoService),
    ))
}

/// A listener on 127.0.0.1, its address, and the stop and tracker its accept loop will get.
fn loopback() -> (tokio::net::TcpListener, SocketAddr, Shutdown, Arc<Tracker>) {
    let listener = accept::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr, Shutdown::new(), Tracker::new())
}

// Both below run on one thread: the accept loop first runs at the test's first await, after the
// stop has begun.

#[tokio::test]
async fn a_stopping_listener_holds_the_drain_through_its_grace_completes_no_new_connection_then_refuses() {
    let (listener, addr, shutdown, tracker) = loopback();
    let task = start(listener, &shutdown, &tracker);
    // Counted from the call, before the loop first runs: a stop that came now would still wait.
    assert!(!tracker.is_idle(), "the drain would see nothing to wait for before the accept loop first runs");
    assert_eq!(tracker.count(), 0, "a listener is not a connection");
    shutdown.trigger();
    tokio::task::yield_now().await;
    // No connection is open, yet the drain must wait: the listener may still take one whose
    // handshake was under way, and exiting would reset it.
    assert!(!tracker.is_idle(), "the drain saw nothing to wait for while the listener was still taking connections");
    assert!(!try_connect(addr, SYN_DROPPED).await.expect("no answer"), "a connection completed after the stop");
    tokio::time::timeout(LIMIT, task).await.expect("the accept loop ends after its grace").expect("join");
    assert!(tracker.is_idle());
    let refused = try_connect(addr, LIMIT).await.expect_err("the closed port answers");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn a_connection_queued_with_its_request_when_the_stop_begins_is_answered_with_connection_close() {
    let (listener, addr, shutdown, tracker) = loopback();
    // Completed by the kernel and carrying a request before the accept loop ever runs.
    let queued = std::net::TcpStream::connect(addr).expect("connect");
    queued.set_nonblocking(true).expect("nonblocking");
    let mut queued = tokio::net::TcpStream::from_std(queued).expect("register");
    let task = start(listener, &shutdown, &tracker);
    shutdown.trigger();
    queued.write_all(b"GET /q HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(LIMIT, queued.read_to_end(&mut answer))
        .await
        .expect("answered and closed in time")
        .expect("the queued request is answered, then the connection closes");
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    tokio::time::timeout(LIMIT, task).await.expect("the accept loop ends after its grace").expect("join");
    tokio::time::timeout(LIMIT, tracker.wait_idle()).await.expect("drained");
}
