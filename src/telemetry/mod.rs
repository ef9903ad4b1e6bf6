//! What every finished request feeds: the metrics and the access log, behind one handle shared by
//! the listeners ([`Telemetry`]); the per-request record and its once-only report ([`record`]);
//! tandem's own diagnostics ([`logging`], [`ratelimit`]). Near the bottom: it calls only
//! [`crate::base`] and [`crate::config`], and every other folder calls it.

pub mod access_log;
pub mod logging;
pub mod metrics;
pub mod ratelimit;
pub mod record;

use crate::base::reason::Direction;
use crate::base::reason::Reason;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::{Metrics, INBOUND_UPSTREAM};
use crate::telemetry::record::RequestRecord;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The metrics and access log of one running tandem.
pub struct Telemetry {
    pub metrics: Metrics,
    pub access_log: AccessLog,
    /// Raised once tandem starts closing connections itself ([`Telemetry::begin_local_reset`]).
    local_reset: AtomicBool,
}

impl Telemetry {
    pub fn new(metrics: Metrics, access_log: AccessLog) -> Self {
        Self { metrics, access_log, local_reset: AtomicBool::new(false) }
    }

    /// From now on tandem closes the connections that remain itself (the drain deadline passed,
    /// or a second stop signal came): a request reported as cut from here on was cut by tandem,
    /// not left by its client, and is reported `LR` instead of `DC`. Call it before the
    /// connections are told to close; it stays raised until tandem exits.
    pub fn begin_local_reset(&self) {
        self.local_reset.store(true, Ordering::Release);
    }

    /// True once [`Telemetry::begin_local_reset`] has been called.
    pub fn is_local_reset(&self) -> bool {
        self.local_reset.load(Ordering::Acquire)
    }

    /// The reason for a request that ended before its response did because its connection
    /// went: `LR` once tandem is closing connections itself, `DC` (the client left) before that.
    pub fn cut_reason(&self) -> Reason {
        if self.is_local_reset() {
            Reason::LR
        } else {
            Reason::DC
        }
    }

    pub fn request_started(&self, d: Direction) {
        self.metrics.request_started(d);
    }

    /// Counts the finished request (its access-log line goes through [`Telemetry::log`]).
    pub fn request_finished(&self, r: &RequestRecord) {
        self.metrics.request_finished(r);
    }

    /// Hands the finished record to the access log (moves it; formatting happens off the request path).
    pub fn log(&self, r: Box<RequestRecord>) {
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

    /// Logs and counts a request that hyper's HTTP/1.1 codec refused before tandem's stack saw
    /// it (see [`codec_refusal`]): one access-log line with method `-`, the status hyper sent and
    /// `DPE`, and one count in the metrics. The accept loop calls this with the error a
    /// connection ended with; returns false, reporting nothing, for any other error.
    pub fn connection_error(
        &self,
        direction: Direction,
        peer: SocketAddr,
        err: &(dyn std::error::Error + 'static),
    ) -> bool {
        let Some(status) = codec_refusal(err) else { return false };
        self.refused(direction, peer, status, http::Version::HTTP_11, None);
        true
    }

    /// Logs and counts a request refused before tandem's stack saw it (by hyper's HTTP/1.1
    /// parser, or by [`crate::h2::server`] for a malformed HTTP/2 request): one access-log line
    /// with method `-`, `status`, `DPE` and the connection's protocol, and one count in the
    /// metrics. `grpc_status`: the request was gRPC and was answered with that status.
    pub fn refused(
        &self,
        direction: Direction,
        peer: SocketAddr,
        status: u16,
        protocol: http::Version,
        grpc_status: Option<u16>,
    ) {
        let record = RequestRecord {
            method: http::Method::from_bytes(b"-").unwrap_or_default(),
            response_code: status,
            response_flags: Some(Reason::DPE),
            upstream_cluster: match direction {
                Direction::Inbound => INBOUND_UPSTREAM,
                Direction::Outbound => "-",
            },
            protocol,
            grpc: grpc_status.is_some(),
            grpc_status,
            ..RequestRecord::empty(direction, peer)
        };
        self.request_started(direction);
        self.request_finished(&record);
        self.log(Box::new(record));
    }

    /// Everything in the Prometheus text format, gathered off the runtime (the process collector
    /// reads `/proc`).
    pub async fn render_metrics(self: &Arc<Self>) -> Vec<u8> {
        let t = self.clone();
        tokio::task::spawn_blocking(move || t.metrics.render()).await.unwrap_or_default()
    }
}

/// The status hyper's HTTP/1.1 codec answered with when it refused a request head before any
/// service ran: 400 (malformed request line or header), 414 (URI too long), 431 (head over the
/// buffer limit). `None` for every other error, including the header-read timeout, which also
/// fires on idle keep-alive connections that never started a request.
pub fn codec_refusal(err: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_parse_too_large() {
                return Some(if h.to_string().starts_with("URI too long") { 414 } else { 431 });
            }
            if h.is_parse() && !h.is_parse_status() && !h.is_parse_version_h2() {
                return Some(400);
            }
            return None;
        }
        source = e.source();
    }
    None
}
