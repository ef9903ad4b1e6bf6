//! What every finished request feeds: the metrics and the access log, behind one handle shared by
//! the listeners.

use crate::access_log::AccessLog;
use crate::metrics::Metrics;
use crate::record::{Direction, RequestRecord};

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

    /// Counts the request and queues its access-log line.
    pub fn request_finished(&self, r: &RequestRecord) {
        self.metrics.request_finished(r);
    }

    /// Hands the finished record to the access log (moves it; formatting happens off the request path).
    pub fn log(&self, r: RequestRecord) {
        self.access_log.log(r);
    }
}
