//! Connections to upstreams: the codec's pool of idle TCP connections to the app
//! ([`AppStreams`]), hyper's lean HTTP/1.1 pool ([`Http1Pool`]) and hyper-util's general client,
//! each with an idle reaper ([`Reaper`]).

use crate::base::body::CountingBody;
use crate::config::{AppProtocol, Limits, Timeouts};
use bytes::BytesMut;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
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

/// Pooled HTTP/1.1 keep-alive connections to one upstream address.
///
/// Idle connections wait in a LIFO stack (the most recently used is the warmest); a connection
/// goes back when its response body has ended and hyper says it is ready for the next request.
/// Connections idle longer than `idle_timeout` are closed by a reaper task, at most
/// `max_idle` are kept, and a request that fails on a pooled connection before any of it was
/// written (the app closed the idle connection) is retried on a fresh one, as hyper-util does.
pub struct Http1Pool {
    addr: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    max_buf_size: usize,
    idle: Mutex<Vec<(http1::SendRequest<CountingBody>, Instant)>>,
    reaper: Reaper,
}

/// Why a request through [`Http1Pool`] failed.
#[derive(Debug)]
pub enum PoolError {
    /// The TCP connect failed (refused, unreachable) or timed out.
    Connect(std::io::Error),
    /// The connection failed after it was established (closed, reset, invalid response).
    Http(hyper::Error),
}

/// Returns a connection to its pool when dropped: held by the response body until it ends.
pub struct Checkin {
    pool: Arc<Http1Pool>,
    tx: Option<http1::SendRequest<CountingBody>>,
}

impl Drop for Checkin {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.pool.put(tx);
        }
    }
}

impl Http1Pool {
    pub fn new(addr: SocketAddr, timeouts: &Timeouts, limits: &Limits) -> Arc<Self> {
        Arc::new(Self {
            addr,
            connect_timeout: timeouts.connect.value,
            idle_timeout: timeouts.upstream_idle.value,
            max_idle: limits.max_idle_per_upstream,
            max_buf_size: 1024 * 1024,
            idle: Mutex::new(Vec::new()),
            reaper: Reaper::default(),
        })
    }

    /// Sends `req` (origin-form URI, Host set) on an idle connection or a new one. The returned
    /// [`Checkin`] must live as long as the response body: dropping it returns the connection.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<CountingBody>,
    ) -> Result<(Response<Incoming>, Checkin), PoolError> {
        while let Some(mut tx) = self.take_idle() {
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Checkin { pool: self.clone(), tx: Some(tx) })),
                Err(mut e) => match e.take_message() {
                    // Nothing was written: the app closed this idle connection; try another.
                    Some(r) => req = r,
                    None => return Err(PoolError::Http(e.into_error())),
                },
            }
        }
        // Boxed: connecting is rare on a warm pool, and its future (connect timeout, TCP
        // connect, handshake) would otherwise make every request's future several KiB larger.
        let mut tx = Box::pin(self.connect()).await?;
        match tx.try_send_request(req).await {
            Ok(resp) => Ok((resp, Checkin { pool: self.clone(), tx: Some(tx) })),
            Err(e) => Err(PoolError::Http(e.into_error())),
        }
    }

    /// Idle connections right now (for tests and the admin view).
    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(http1::SendRequest<CountingBody>, Instant)>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_idle(&self) -> Option<http1::SendRequest<CountingBody>> {
        let mut idle = self.lock();
        while let Some((tx, _since)) = idle.pop() {
            if tx.is_ready() {
                return Some(tx);
            }
        }
        None
    }

    fn put(self: &Arc<Self>, tx: http1::SendRequest<CountingBody>) {
        if tx.is_ready() {
            self.push_idle(tx);
        } else if !tx.is_closed() {
            // Still finishing the previous exchange (a request body still streaming, or another
            // thread's connection task not yet polled): return it once hyper says it is ready.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let pool = Arc::downgrade(self);
                rt.spawn(async move {
                    let mut tx = tx;
                    if tx.ready().await.is_ok() {
                        if let Some(pool) = pool.upgrade() {
                            pool.push_idle(tx);
                        }
                    }
                });
            }
        }
    }

    fn push_idle(&self, tx: http1::SendRequest<CountingBody>) {
        let mut idle = self.lock();
        if idle.len() < self.max_idle {
            idle.push((tx, Instant::now()));
        }
    }

    async fn connect(self: &Arc<Self>) -> Result<http1::SendRequest<CountingBody>, PoolError> {
        let stream = match tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(self.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(PoolError::Connect(e)),
            Err(_) => return Err(PoolError::Connect(std::io::ErrorKind::TimedOut.into())),
        };
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let (tx, conn) = http1::Builder::new()
            .max_buf_size(self.max_buf_size)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(PoolError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        self.reaper.start(self, self.idle_timeout, |pool| {
            let timeout = pool.idle_timeout;
            pool.lock().retain(|(tx, since)| !tx.is_closed() && since.elapsed() < timeout);
        });
        Ok(tx)
    }
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
