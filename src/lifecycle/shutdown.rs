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
//! - **At the deadline** (and at a second stop signal): [`Tracker::close_all`] drops whatever is
//!   still open. The stop sequence (`crate::app`) raises the telemetry's local-reset flag first, so
//!   the requests this cuts are reported `LR`, not `DC`.

use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::sync::Notify;

/// An HTTP/1.1 connection that moves no bytes for this long after a stop began is closed.
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(200);

/// A flag that is raised once and that many tasks wait on. A waiter registers its task's waker
/// the first time it waits and keeps the registration until it is dropped, so a connection that
/// waits for the stop between every two requests pays an atomic load per wait, not a lock
/// (tokio's `watch` and `Notify` lock their waiter list to add and remove a waiter on every wait).
#[derive(Default)]
struct Signal {
    raised: AtomicBool,
    waiters: Mutex<Waiters>,
}

/// The registered wakers: a slot per waiter, reused once its waiter is dropped.
#[derive(Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Signal {
    fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        // A waker that panicked while the list was held leaves it consistent (slots are
        // replaced whole), so a poisoned lock is used as it is.
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Raises the flag and wakes every waiter; true the first time.
    fn raise(&self) -> bool {
        if self.raised.swap(true, Ordering::AcqRel) {
            return false;
        }
        let woken: Vec<Waker> = self.waiters().slots.iter_mut().filter_map(Option::take).collect();
        woken.into_iter().for_each(Waker::wake);
        true
    }
}

/// One task's place in a [`Signal`]'s waiter list.
struct Waiter {
    signal: Arc<Signal>,
    /// The slot and the waker stored in it.
    slot: Option<(usize, Waker)>,
}

impl Waiter {
    fn new(signal: Arc<Signal>) -> Self {
        Self { signal, slot: None }
    }

    fn poll_raised(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.is_raised() {
            return Poll::Ready(());
        }
        if matches!(&self.slot, Some((_, w)) if w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        let waker = cx.waker().clone();
        {
            let mut list = self.signal.waiters();
            let at = match &self.slot {
                Some((at, _)) => *at,
                None => list.free.pop().unwrap_or_else(|| {
                    list.slots.push(None);
                    list.slots.len() - 1
                }),
            };
            list.slots[at] = Some(waker.clone());
            self.slot = Some((at, waker));
        }
        // Raised between the first check and the registration: the raise may have missed it.
        if self.signal.is_raised() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Some((at, _)) = self.slot.take() {
            let mut list = self.signal.waiters();
            list.slots[at] = None;
            list.free.push(at);
        }
    }
}

/// The owner side: starts the drain.
#[derive(Clone, Default)]
pub struct Shutdown {
    signal: Arc<Signal>,
}

/// A watcher: resolves once a stop has begun. Each clone waits on its own; a watcher keeps its
/// registration from one wait to the next (one per connection, not one per request).
pub struct Drain {
    waiter: Waiter,
}

impl Clone for Drain {
    fn clone(&self) -> Self {
        Self { waiter: Waiter::new(self.waiter.signal.clone()) }
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Begins the stop; idempotent. Returns true the first time.
    pub fn trigger(&self) -> bool {
        self.signal.raise()
    }

    pub fn is_draining(&self) -> bool {
        self.signal.is_raised()
    }

    pub fn drain(&self) -> Drain {
        Drain { waiter: Waiter::new(self.signal.clone()) }
    }
}

impl Drain {
    /// Waits until a stop begins (forever if none ever does).
    pub async fn wait(&mut self) {
        std::future::poll_fn(|cx| self.waiter.poll_raised(cx)).await
    }

    pub fn is_draining(&self) -> bool {
        self.waiter.signal.is_raised()
    }
}

/// Counts open connections (or tunnels) so a drain can finish as soon as the count reaches zero,
/// and closes whatever is left when the drain deadline passes. A listener still accepting counts
/// too ([`Tracker::listening`]): the drain is not over while a connection can still arrive.
#[derive(Default)]
pub struct Tracker {
    /// Connections and listeners.
    open: AtomicUsize,
    listeners: AtomicUsize,
    /// The most `open` has been since [`Tracker::take_peak`] last read it (a burst shorter than
    /// the reader's interval is seen all the same).
    peak: AtomicUsize,
    idle: Notify,
    force: Arc<Signal>,
}

/// Held while one connection is open, or one listener accepts.
pub struct TrackerGuard {
    tracker: Arc<Tracker>,
    listener: bool,
}

impl Tracker {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// One connection, open until the guard drops.
    pub fn open(self: &Arc<Self>) -> TrackerGuard {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak.fetch_max(open, Ordering::Relaxed);
        TrackerGuard { tracker: self.clone(), listener: false }
    }

    /// One listener, accepting until the guard drops: take it before the accept loop is spawned,
    /// so a stop that comes before the loop first runs still waits for it.
    pub fn listening(self: &Arc<Self>) -> TrackerGuard {
        self.listeners.fetch_add(1, Ordering::AcqRel);
        self.open.fetch_add(1, Ordering::AcqRel);
        TrackerGuard { tracker: self.clone(), listener: true }
    }

    /// Connections open (listeners not counted).
    pub fn count(&self) -> usize {
        self.open.load(Ordering::Acquire).saturating_sub(self.listeners.load(Ordering::Acquire))
    }

    /// The most connections open at once since the last call (listeners not counted); the next
    /// call starts from the count open now.
    pub fn take_peak(&self) -> usize {
        let open = self.open.load(Ordering::Acquire);
        let peak = self.peak.swap(open, Ordering::Relaxed).max(open);
        peak.saturating_sub(self.listeners.load(Ordering::Acquire))
    }

    /// True when no connection is open and no listener accepts.
    pub fn is_idle(&self) -> bool {
        self.open.load(Ordering::Acquire) == 0
    }

    /// Waits until no connection is open and no listener accepts.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.is_idle() {
                return;
            }
            notified.await;
        }
    }

    /// Tells every open connection to close now, whatever it is doing (the drain deadline).
    pub fn close_all(&self) {
        self.force.raise();
    }
}

impl TrackerGuard {
    /// Resolves when [`Tracker::close_all`] is called: the holder drops its connection. The
    /// future registers once, however often it is polled.
    pub async fn closed_by_force(&self) {
        let mut waiter = Waiter::new(self.tracker.force.clone());
        std::future::poll_fn(|cx| waiter.poll_raised(cx)).await
    }
}

impl Drop for TrackerGuard {
    fn drop(&mut self) {
        if self.listener {
            self.tracker.listeners.fetch_sub(1, Ordering::AcqRel);
        }
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

    /// A waker that counts its wakes.
    struct Count(AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn a_drain_registers_once_wakes_its_latest_waker_and_frees_its_slot() {
        let stop = Shutdown::new();
        let mut a = stop.drain();
        let mut b = a.clone();
        let (first, w1) = counting();
        let (second, w2) = counting();
        let (other, w3) = counting();
        assert!(a.waiter.poll_raised(&mut Context::from_waker(&w1)).is_pending());
        assert!(a.waiter.poll_raised(&mut Context::from_waker(&w1)).is_pending());
        assert_eq!(stop.signal.waiters().slots.len(), 1, "a second wait with the same waker registers nothing");
        // The task's waker changed: the slot is updated, not added to.
        assert!(a.waiter.poll_raised(&mut Context::from_waker(&w2)).is_pending());
        assert!(b.waiter.poll_raised(&mut Context::from_waker(&w3)).is_pending());
        assert_eq!(stop.signal.waiters().slots.len(), 2);
        // A dropped waiter's slot goes to the next one.
        drop(b);
        let mut c = stop.drain();
        assert!(c.waiter.poll_raised(&mut Context::from_waker(&w3)).is_pending());
        assert_eq!(stop.signal.waiters().slots.len(), 2, "the freed slot was reused");
        assert!(stop.trigger());
        assert_eq!(first.0.load(Ordering::SeqCst), 0, "the replaced waker is not woken");
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert_eq!(other.0.load(Ordering::SeqCst), 1, "the reused slot's waiter is woken");
        assert!(a.waiter.poll_raised(&mut Context::from_waker(&w2)).is_ready());
        assert!(c.is_draining());
        // A watcher made after the stop is ready at once, and nothing is woken twice.
        let mut late = stop.drain();
        assert!(late.waiter.poll_raised(&mut Context::from_waker(&w1)).is_ready());
        assert!(!stop.trigger());
        assert_eq!(second.0.load(Ordering::SeqCst) + other.0.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_drain_waited_on_again_and_again_resolves_once_the_stop_begins() {
        let stop = Shutdown::new();
        let mut drain = stop.drain();
        for _ in 0..3 {
            // Each wait is cut short, as a connection's wait for its next request is.
            let waited = tokio::time::timeout(Duration::from_millis(1), drain.wait()).await;
            assert!(waited.is_err(), "no stop yet");
        }
        let waiting = tokio::spawn(async move { drain.wait().await });
        // On this current-thread runtime the spawned wait runs here and registers its own task's
        // waker (a different one from the waits above), so the trigger has a waker to wake; the
        // wait resolves whichever runs first.
        tokio::task::yield_now().await;
        stop.trigger();
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("woken by the stop").expect("task");
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

    #[tokio::test]
    async fn a_listener_keeps_the_tracker_busy_without_counting_as_a_connection() {
        let t = Tracker::new();
        let listening = t.listening();
        let conn = t.open();
        assert_eq!(t.count(), 1);
        drop(conn);
        assert_eq!(t.count(), 0);
        assert!(!t.is_idle());
        let waiting = tokio::spawn({
            let t = t.clone();
            async move { t.wait_idle().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "idle while a listener still accepts");
        drop(listening);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("idle once the listener closes")
            .expect("task");
        assert!(t.is_idle());
    }
}
