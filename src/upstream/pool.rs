//! Connections to upstreams: the one pool of idle TCP connections to an HTTP/1.1 app
//! ([`AppStreams`], with its idle reaper, [`Reaper`]), and hyper-util's pooled client for an app
//! that speaks h2 and for the outbound side ([`client`]).

use crate::base::body::CountingBody;
use crate::config::{AppProtocol, Limits, Timeouts};
use bytes::BytesMut;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// The upstream client type: pooled keep-alive connections, request bodies streamed as they come.
pub type UpstreamClient = Client<HttpConnector, CountingBody>;

/// Builds the pooled client for one upstream side.
pub fn client(timeouts: &Timeouts, limits: &Limits, protocol: AppProtocol) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(timeouts.connect.value));
    connector.set_keepalive(Some(std::time::Duration::from_secs(60)));
    connector.enforce_http(true);
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(timeouts.upstream_idle.value)
        .pool_max_idle_per_host(limits.max_idle_per_upstream)
        // Host comes from the client's request, never from the upstream's address.
        .set_host(false)
        .http1_max_buf_size(1024 * 1024)
        .http2_only(protocol == AppProtocol::Http2);
    if protocol == AppProtocol::Http2 {
        b.http2_keep_alive_interval(std::time::Duration::from_secs(30))
            .http2_keep_alive_timeout(std::time::Duration::from_secs(10))
            .http2_adaptive_window(true);
    }
    b.build(connector)
}

/// A pool's idle-connection reaper: one task per pool, started with its first connection,
/// ending with the pool.
#[derive(Default)]
pub(crate) struct Reaper(std::sync::atomic::AtomicBool);

impl Reaper {
    /// Starts the task once (not at all for an `idle_timeout` of 0): every half `idle_timeout`,
    /// at least every 100 ms, `sweep` closes what the pool no longer wants.
    pub(crate) fn start<P: Send + Sync + 'static>(&self, pool: &Arc<P>, idle_timeout: Duration, sweep: fn(&P)) {
        if idle_timeout.is_zero() || self.0.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.0.store(false, std::sync::atomic::Ordering::Release);
            return;
        };
        let pool: Weak<P> = Arc::downgrade(pool);
        let every = (idle_timeout / 2).max(Duration::from_millis(100));
        rt.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                sweep(&pool);
            }
        });
    }
}

/// Idle keep-alive TCP connections to the app, for the codec: a LIFO stack (the warmest first),
/// at most `max_idle`, each closed after `idle_timeout` by a reaper task. A connection the app
/// closed while it waited is noticed when it is taken (its socket turned readable) and dropped.
pub struct AppStreams {
    addr: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<IdleStream>>,
    reaper: crate::upstream::pool::Reaper,
}

/// An idle connection in [`AppStreams`], with the read buffer the codec's client half last
/// used on it (empty for the codec's own connections, which keep their buffers per client
/// connection).
struct IdleStream {
    stream: TcpStream,
    since: Instant,
    buf: BytesMut,
}

impl AppStreams {
    pub fn new(addr: SocketAddr, timeouts: &crate::config::Timeouts, limits: &crate::config::Limits) -> Arc<Self> {
        Arc::new(Self {
            addr,
            connect_timeout: timeouts.connect.value,
            idle_timeout: timeouts.upstream_idle.value,
            max_idle: limits.max_idle_per_upstream,
            idle: Mutex::new(Vec::new()),
            reaper: crate::upstream::pool::Reaper::default(),
        })
    }

    /// A pool of its own to `addr`, with this one's timeouts and limits (the app on another
    /// port, in transparent mode).
    pub fn to(&self, addr: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            addr,
            connect_timeout: self.connect_timeout,
            idle_timeout: self.idle_timeout,
            max_idle: self.max_idle,
            idle: Mutex::new(Vec::new()),
            reaper: crate::upstream::pool::Reaper::default(),
        })
    }

    /// Idle connections right now.
    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<IdleStream>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection that is still open.
    pub(crate) fn take(&self) -> Option<TcpStream> {
        self.take_with_buf().map(|(s, _)| s)
    }

    /// [`AppStreams::take`], with the buffer that came back with the connection (its capacity
    /// reclaimable once the bytes of the last answer have been sent on and dropped).
    pub(crate) fn take_with_buf(&self) -> Option<(TcpStream, BytesMut)> {
        let mut idle = self.lock();
        while let Some(i) = idle.pop() {
            if still_open(&i.stream) {
                return Some((i.stream, i.buf));
            }
        }
        None
    }

    pub(crate) fn put(self: &Arc<Self>, s: TcpStream) {
        self.put_with_buf(s, BytesMut::new());
    }

    /// Returns a connection to the pool with a buffer for its next answer (see
    /// [`AppStreams::take_with_buf`]).
    pub(crate) fn put_with_buf(self: &Arc<Self>, stream: TcpStream, buf: BytesMut) {
        let mut idle = self.lock();
        if idle.len() < self.max_idle {
            idle.push(IdleStream { stream, since: Instant::now(), buf });
        }
        drop(idle);
        self.reaper.start(self, self.idle_timeout, |pool| {
            let timeout = pool.idle_timeout;
            pool.lock().retain(|i| i.since.elapsed() < timeout && still_open(&i.stream));
        });
    }

    /// A new connection, within `timeouts.connect`.
    pub(crate) async fn connect(&self) -> io::Result<TcpStream> {
        let s = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr)).await {
            Ok(r) => r?,
            Err(_) => return Err(io::ErrorKind::TimedOut.into()),
        };
        let _ = s.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&s).set_tcp_keepalive(&keepalive);
        Ok(s)
    }
}

/// Whether an idle connection can carry a request: not readable (a readable idle connection
/// was closed by the app or sent something unasked). Costs a syscall only when the socket's
/// readiness is set.
fn still_open(s: &TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match s.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(s.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}
