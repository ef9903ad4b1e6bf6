//! The HTTP/2 server's abuse counts ([`crate::h2::server::abuse`]) as the Prometheus counter
//! `tandem_h2_abuse_total{kind}`: a collector on the registry passed in that reads the
//! process-wide totals at each scrape, so the server's hot path touches only its own atomics.

use crate::h2::server::abuse;
use prometheus::core::{Collector, Desc};
use prometheus::{proto, IntCounter, IntCounterVec, Opts, Registry};
use std::sync::Mutex;

/// Reads [`abuse::totals`] into its counter at every scrape.
struct AbuseCollector {
    counter: IntCounterVec,
    /// One child per kind, made at registration so every kind shows from the start (as 0).
    kinds: Vec<(abuse::Abuse, IntCounter)>,
    /// Two scrapes at once must not both add the same difference.
    catch_up: Mutex<()>,
}

impl Collector for AbuseCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.counter.desc()
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let _one = self.catch_up.lock().unwrap_or_else(|e| e.into_inner());
        for (kind, total) in abuse::totals() {
            if let Some((_, c)) = self.kinds.iter().find(|(k, _)| *k == kind) {
                c.inc_by(total.saturating_sub(c.get()));
            }
        }
        self.counter.collect()
    }
}

/// Registers `tandem_h2_abuse_total` on `registry`. The totals are the process's: two tandems
/// in one process (tests) see each other's.
pub fn register(registry: &Registry) -> Result<(), prometheus::Error> {
    let counter = IntCounterVec::new(
        Opts::new(
            "tandem_h2_abuse_total",
            "HTTP/2 connections tandem's own server cut short for abuse (GOAWAY ENHANCE_YOUR_CALM, a stalled stream reset, or an unread connection closed), by kind.",
        ),
        &["kind"],
    )?;
    let kinds = abuse::totals().iter().map(|(k, _)| (*k, counter.with_label_values(&[k.as_str()]))).collect();
    registry.register(Box::new(AbuseCollector { counter, kinds, catch_up: Mutex::new(()) }))
}
