//! The stop signal shared by every listener: one trigger (SIGTERM, SIGINT, `POST /shutdown`), many
//! watchers, and a count of what is still open so the drain can end early.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{watch, Notify};

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

/// Counts open connections (or tunnels) so a drain can finish as soon as the count reaches zero.
#[derive(Default)]
pub struct Tracker {
    open: AtomicUsize,
    idle: Notify,
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
}

impl Drop for TrackerGuard {
    fn drop(&mut self) {
        if self.tracker.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tracker.idle.notify_waiters();
        }
    }
}
