//! The stop signal shared by every listener: one trigger (SIGTERM, SIGINT, `POST /shutdown`), many
//! watchers; a count of what is still open so the drain can end early, with a way to close what
//! remains at the deadline; and the per-connection drain rules the accept loop applies.
//!
//! # How one connection drains
//!
//! - **HTTP/2**: GOAWAY at once (hyper sends the graceful pair: GOAWAY with the largest stream id,
//!   then the real last stream id after a PING round trip), open streams finish.
//! - **HTTP/1.1**: every response whose head is written after the stop began carries
//!   `Connection: close` ([`DrainAware`]), so a client finishes its request and then reconnects
//!   elsewhere. A connection that moves no bytes for [`DRAIN_IDLE_GRACE`] is closed: an idle
//!   keep-alive connection goes quickly, but a request already on its way when the stop began is
//!   answered instead of being reset. (Closing every idle HTTP/1.1 connection the instant the stop
//!   begins races with the next request a busy client has just sent, and that request fails.)
//! - **Nothing read yet**: treated as HTTP/1.1 until a request shows otherwise.
//! - **At the deadline**: [`Tracker::close_all`] drops whatever is still open.

use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// An HTTP/1.1 connection that moves no bytes for this long after a stop began is closed.
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(200);

/// The owner side: starts the drain.
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

/// A watcher: resolves once a stop has begun.
#[derive(Clone)]
pub struct Drain {
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (tx, _) = watch::channel(false);
        Self { tx: Arc::new(tx) }
    }

    /// Begins the stop; idempotent. Returns true the first time.
    pub fn trigger(&self) -> bool {
        let mut first = false;
        self.tx.send_if_modified(|draining| {
            first = !*draining;
            *draining = true;
            first
        });
        first
    }

    pub fn is_draining(&self) -> bool {
        *self.tx.borrow()
    }

    pub fn drain(&self) -> Drain {
        Drain { rx: self.tx.subscribe() }
    }
}

impl Drain {
    /// Waits until a stop begins.
    pub async fn wait(&mut self) {
        if self.rx.wait_for(|d| *d).await.is_err() {
            // Every trigger is gone: no stop can begin any more.
            std::future::pending::<()>().await;
        }
    }

    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }
}

/// Counts open connections (or tunnels) so a drain can finish as soon as the count reaches zero,
/// and closes whatever is left when the drain deadline passes.
pub struct Tracker {
    open: AtomicUsize,
    idle: Notify,
    force: watch::Sender<bool>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self { open: AtomicUsize::new(0), idle: Notify::new(), force: watch::channel(false).0 }
    }
}

/// Held while one connection is open.
pub struct TrackerGuard {
    tracker: Arc<Tracker>,
}

impl Tracker {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn open(self: &Arc<Self>) -> TrackerGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        TrackerGuard { tracker: self.clone() }
    }

    pub fn count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until nothing is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Tells every open connection to close now, whatever it is doing (the drain deadline).
    pub fn close_all(&self) {
        self.force.send_replace(true);
    }
}

impl TrackerGuard {
    /// Resolves when [`Tracker::close_all`] is called: the holder drops its connection.
    pub async fn closed_by_force(&self) {
        let mut rx = self.tracker.force.subscribe();
        if rx.wait_for(|f| *f).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for TrackerGuard {
    fn drop(&mut self) {
        if self.tracker.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tracker.idle.notify_waiters();
        }
    }
}

/// What one connection has shown about itself, for its drain.
#[derive(Default)]
pub struct ConnInfo {
    h2: AtomicBool,
}

impl ConnInfo {
    /// True once a request arrived over HTTP/2.
    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }
}

/// Wraps a connection's service: notes the protocol, and once a stop has begun adds
/// `Connection: close` to every HTTP/1.x response so the client does not reuse the connection.
#[derive(Clone)]
pub struct DrainAware<S> {
    inner: S,
    drain: Drain,
    info: Arc<ConnInfo>,
}

impl<S> DrainAware<S> {
    pub fn new(inner: S, drain: Drain, info: Arc<ConnInfo>) -> Self {
        Self { inner, drain, info }
    }
}

impl<S, ReqBody, B> hyper::service::Service<Request<ReqBody>> for DrainAware<S>
where
    S: hyper::service::Service<Request<ReqBody>, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = DrainAwareFuture<S::Future>;

    fn call(&self, req: Request<ReqBody>) -> Self::Future {
        let http1 = req.version() <= Version::HTTP_11;
        if !http1 {
            self.info.h2.store(true, Ordering::Relaxed);
        }
        DrainAwareFuture { inner: self.inner.call(req), drain: http1.then(|| self.drain.clone()) }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`DrainAware`].
    pub struct DrainAwareFuture<F> {
        #[pin]
        inner: F,
        // Set for HTTP/1.x requests only: HTTP/2 forbids connection-specific headers.
        drain: Option<Drain>,
    }
}

impl<F, B, E> Future for DrainAwareFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = match this.inner.poll(cx) {
            Poll::Ready(Ok(resp)) => resp,
            other => return other,
        };
        if this.drain.as_ref().is_some_and(Drain::is_draining) && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::service::Service;
    use std::convert::Infallible;

    #[derive(Clone)]
    struct Ok200;

    impl Service<Request<()>> for Ok200 {
        type Response = Response<()>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<()>, Infallible>>;
        fn call(&self, _req: Request<()>) -> Self::Future {
            std::future::ready(Ok(Response::new(())))
        }
    }

    fn request(version: Version) -> Request<()> {
        let mut r = Request::new(());
        *r.version_mut() = version;
        r
    }

    #[tokio::test]
    async fn http1_responses_get_connection_close_only_while_draining() {
        let stop = Shutdown::new();
        let info = Arc::new(ConnInfo::default());
        let svc = DrainAware::new(Ok200, stop.drain(), info.clone());
        let before = svc.call(request(Version::HTTP_11)).await.expect("response");
        assert!(before.headers().get(header::CONNECTION).is_none());
        assert!(stop.trigger());
        assert!(!stop.trigger(), "a second trigger reports that the stop had already begun");
        let after = svc.call(request(Version::HTTP_11)).await.expect("response");
        assert_eq!(after.headers().get(header::CONNECTION).map(|v| v.as_bytes()), Some(&b"close"[..]));
        assert!(!info.is_h2());
    }

    #[tokio::test]
    async fn http2_responses_never_get_connection_headers() {
        let stop = Shutdown::new();
        stop.trigger();
        let info = Arc::new(ConnInfo::default());
        let svc = DrainAware::new(Ok200, stop.drain(), info.clone());
        let resp = svc.call(request(Version::HTTP_2)).await.expect("response");
        assert!(resp.headers().get(header::CONNECTION).is_none());
        assert!(info.is_h2());
    }

    #[tokio::test]
    async fn tracker_counts_and_force_closes() {
        let t = Tracker::new();
        let a = t.open();
        let b = t.open();
        assert_eq!(t.count(), 2);
        t.close_all();
        a.closed_by_force().await;
        b.closed_by_force().await;
        drop(a);
        drop(b);
        t.wait_idle().await;
        assert_eq!(t.count(), 0);
    }
}
