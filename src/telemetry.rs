//! What every finished request feeds: the metrics and the access log, behind one handle shared by
//! the listeners.

use crate::access_log::AccessLog;
use crate::metrics::Metrics;
use crate::record::{Direction, RequestRecord};
use std::sync::Arc;

/// The metrics and access log of one running tandem.
pub struct Telemetry {
    pub metrics: Metrics,
    pub access_log: AccessLog,
}

impl Telemetry {
    pub fn new(metrics: Metrics, access_log: AccessLog) -> Self {
        Self { metrics, access_log }
    }

    pub fn request_started(&self, d: Direction) {
        self.metrics.request_started(d);
    }

    /// Counts the finished request (its access-log line goes through [`Telemetry::log`]).
    pub fn request_finished(&self, r: &RequestRecord) {
        self.metrics.request_finished(r);
    }

    /// Hands the finished record to the access log (moves it; formatting happens off the request path).
    pub fn log(&self, r: RequestRecord) {
        self.access_log.log(r);
    }

    /// Waits until every access-log line queued so far is written, without blocking the runtime.
    pub async fn flush_access_log(self: &Arc<Self>) {
        if !self.access_log.enabled() {
            return;
        }
        let t = self.clone();
        let _ = tokio::task::spawn_blocking(move || t.access_log.flush()).await;
    }

    /// Reopens the access-log file and returns once the writer has done it (what
    /// `POST /reopen-logs` and a log shipper's postrotate step rely on); `Err` says why the
    /// reopen failed.
    pub async fn reopen_access_log(self: &Arc<Self>) -> Result<(), String> {
        self.access_log.reopen();
        let t = self.clone();
        tokio::task::spawn_blocking(move || t.access_log.sync())
            .await
            .unwrap_or_else(|e| Err(format!("access log reopen did not complete: {e}")))
    }

    /// Everything in the Prometheus text format, gathered off the runtime (the process collector
    /// reads `/proc`).
    pub async fn render_metrics(self: &Arc<Self>) -> Vec<u8> {
        let t = self.clone();
        tokio::task::spawn_blocking(move || t.metrics.render()).await.unwrap_or_default()
    }
}
