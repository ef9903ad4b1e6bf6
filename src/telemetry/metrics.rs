//! Prometheus metrics: every metric tandem exports, registered on one registry that is passed in,
//! with a fixed, small label set (never a path or a raw authority).
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `tandem_http_requests_total` | counter | `direction`, `upstream`, `method`, `status_code`, `response_flags` |
//! | `tandem_http_request_duration_seconds` | histogram | `direction`, `upstream` |
//! | `tandem_http_requests_in_flight` | gauge | `direction` |
//! | `tandem_http_request_bytes_total`, `tandem_http_response_bytes_total` | counter | `direction` |
//! | `tandem_tcp_connections_opened_total`, `_closed_total`, `_rejected_total` | counter | `direction` |
//! | `tandem_tcp_connections_active` | gauge | `direction` |
//! | `tandem_protocol_detection_total` | counter | `direction`, `result` |
//! | `tandem_h2_abuse_total` (registered by [`crate::h2::metrics`]) | counter | `kind` |
//! | `tandem_access_log_lines_total`, `tandem_access_log_dropped_total` | counter | |
//! | `tandem_ready` | gauge | |
//! | `tandem_build_info` | gauge | `version`, `commit`, `profile`, `rustc` |
//! | `process_*` | the process collector (Linux); CPU seconds fractional | |
//!
//! `upstream` is the record's `upstream_cluster`: `app` inbound; outbound, `passthrough` or the
//! name of a configured upstream, so its values are bounded by the configuration. `method` is one
//! of the nine standard methods or `other`; `status_code` is the number (`0` when the client went
//! away before a response); `response_flags` is a reason code or `-`.

use crate::base::reason::Direction;
use crate::base::reason::Reason;
use crate::telemetry::record::RequestRecord;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Latency buckets, in seconds: resolve 100 µs to 60 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The `upstream` label of inbound requests.
pub const INBOUND_UPSTREAM: &str = "app";
/// The `upstream` label of outbound requests forwarded to the authority they name.
pub const OUTBOUND_UPSTREAM: &str = "passthrough";

/// What protocol detection found on a redirected connection (transparent mode): the `result`
/// label of `tandem_protocol_detection_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 preface.
    Http2,
    /// A TLS ClientHello.
    Tls,
    /// Anything else, or a port in `transparent.opaque_ports` (not looked at).
    Opaque,
    /// Nothing decisive within `transparent.detect_timeout`: passed through as TCP.
    Timeout,
}

impl Detection {
    pub const ALL: [Detection; 5] =
        [Detection::Http1, Detection::Http2, Detection::Tls, Detection::Opaque, Detection::Timeout];

    pub const fn as_str(self) -> &'static str {
        match self {
            Detection::Http1 => "http1",
            Detection::Http2 => "http2",
            Detection::Tls => "tls",
            Detection::Opaque => "opaque",
            Detection::Timeout => "timeout",
        }
    }
}

/// Every metric tandem exports.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    /// Lines the access log dropped because its queue was full.
    pub access_log_dropped: IntCounter,
    /// Lines the access log wrote.
    pub access_log_written: IntCounter,
    ready: IntGauge,
    /// Per direction, the children looked up once (no label hashing per request).
    fast: [Fast; 2],
    /// Status codes 0..600 as label values, made once.
    status: Vec<String>,
}

#[derive(Clone)]
struct Fast {
    /// The duration series of the direction's usual upstream (`app` inbound, made at start;
    /// `passthrough` outbound, made on first use), so a request needs no label lookup. Other
    /// upstreams are looked up by label.
    default_upstream: &'static str,
    duration_default: std::sync::OnceLock<Histogram>,
    in_flight: IntGauge,
    request_bytes: IntCounter,
    response_bytes: IntCounter,
    conns_opened: IntCounter,
    conns_closed: IntCounter,
    conns_active: IntGauge,
    conns_rejected: IntCounter,
    /// By [`Detection`], in its order.
    detected: [IntCounter; 5],
}

fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "other",
    }
}

impl Metrics {
    /// Registers every metric on `registry`.
    pub fn new(registry: Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "tandem_http_requests_total",
                "HTTP requests completed (response body ended or client gone), by outcome.",
            ),
            &["direction", "upstream", "method", "status_code", "response_flags"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "tandem_http_request_duration_seconds",
                "Time from the request head to the end of the response body.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["direction", "upstream"],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new("tandem_http_requests_in_flight", "HTTP requests being served."),
            &["direction"],
        )?;
        let request_bytes = IntCounterVec::new(
            Opts::new("tandem_http_request_bytes_total", "Request body bytes received from clients."),
            &["direction"],
        )?;
        let response_bytes = IntCounterVec::new(
            Opts::new("tandem_http_response_bytes_total", "Response body bytes sent to clients."),
            &["direction"],
        )?;
        let conns_opened = IntCounterVec::new(
            Opts::new("tandem_tcp_connections_opened_total", "Downstream TCP connections accepted."),
            &["direction"],
        )?;
        let conns_closed = IntCounterVec::new(
            Opts::new("tandem_tcp_connections_closed_total", "Downstream TCP connections closed."),
            &["direction"],
        )?;
        let conns_active = IntGaugeVec::new(
            Opts::new("tandem_tcp_connections_active", "Downstream TCP connections open."),
            &["direction"],
        )?;
        let conns_rejected = IntCounterVec::new(
            Opts::new(
                "tandem_tcp_connections_rejected_total",
                "Downstream TCP connections closed at once because max_connections was reached.",
            ),
            &["direction"],
        )?;
        let detected = IntCounterVec::new(
            Opts::new(
                "tandem_protocol_detection_total",
                "Redirected connections (transparent mode) by the protocol their first bytes showed.",
            ),
            &["direction", "result"],
        )?;
        let access_log_dropped = IntCounter::new(
            "tandem_access_log_dropped_total",
            "Access log lines lost: the writer's queue was full, or the write failed.",
        )?;
        let access_log_written = IntCounter::new("tandem_access_log_lines_total", "Access log lines written.")?;
        let ready = IntGauge::new("tandem_ready", "1 when every listener is bound and tandem is not draining.")?;
        let build_info = IntGaugeVec::new(
            Opts::new("tandem_build_info", "Build information; the value is always 1."),
            &["version", "commit", "profile", "rustc"],
        )?;
        {
            use crate::base::build::{COMMIT, PROFILE, RUSTC, VERSION};
            build_info.with_label_values(&[VERSION, COMMIT, PROFILE, RUSTC]).set(1);
        }

        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(request_bytes.clone()))?;
        registry.register(Box::new(response_bytes.clone()))?;
        registry.register(Box::new(conns_opened.clone()))?;
        registry.register(Box::new(conns_closed.clone()))?;
        registry.register(Box::new(conns_active.clone()))?;
        registry.register(Box::new(conns_rejected.clone()))?;
        registry.register(Box::new(detected.clone()))?;
        registry.register(Box::new(access_log_dropped.clone()))?;
        registry.register(Box::new(access_log_written.clone()))?;
        registry.register(Box::new(ready.clone()))?;
        registry.register(Box::new(build_info))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(ProcessMetrics(prometheus::process_collector::ProcessCollector::for_self())))?;

        let fast = |d: Direction| Fast {
            default_upstream: match d {
                Direction::Inbound => INBOUND_UPSTREAM,
                Direction::Outbound => OUTBOUND_UPSTREAM,
            },
            duration_default: match d {
                Direction::Inbound => duration.with_label_values(&[d.as_str(), INBOUND_UPSTREAM]).into(),
                Direction::Outbound => std::sync::OnceLock::new(),
            },
            in_flight: in_flight.with_label_values(&[d.as_str()]),
            request_bytes: request_bytes.with_label_values(&[d.as_str()]),
            response_bytes: response_bytes.with_label_values(&[d.as_str()]),
            conns_opened: conns_opened.with_label_values(&[d.as_str()]),
            conns_closed: conns_closed.with_label_values(&[d.as_str()]),
            conns_active: conns_active.with_label_values(&[d.as_str()]),
            conns_rejected: conns_rejected.with_label_values(&[d.as_str()]),
            detected: Detection::ALL.map(|r| detected.with_label_values(&[d.as_str(), r.as_str()])),
        };
        // Series exist from the start, so a dashboard sees zeros rather than nothing.
        let fast = [fast(Direction::Inbound), fast(Direction::Outbound)];
        Ok(Self {
            registry,
            requests,
            duration,
            access_log_dropped,
            access_log_written,
            ready,
            fast,
            status: (0..600u16).map(|c| c.to_string()).collect(),
        })
    }

    fn fast(&self, d: Direction) -> &Fast {
        &self.fast[d as usize]
    }

    pub fn request_started(&self, d: Direction) {
        self.fast(d).in_flight.inc();
    }

    /// Counts a finished request.
    pub fn request_finished(&self, r: &RequestRecord) {
        let f = self.fast(r.direction);
        f.in_flight.dec();
        f.request_bytes.inc_by(r.bytes_received);
        f.response_bytes.inc_by(r.bytes_sent);
        let secs = r.duration.as_secs_f64();
        if r.upstream_cluster == f.default_upstream {
            f.duration_default
                .get_or_init(|| self.duration.with_label_values(&[r.direction.as_str(), f.default_upstream]))
                .observe(secs);
        } else {
            self.duration.with_label_values(&[r.direction.as_str(), r.upstream_cluster]).observe(secs);
        }
        let flags = r.response_flags.map(Reason::as_str).unwrap_or("-");
        self.requests
            .with_label_values(&[
                r.direction.as_str(),
                r.upstream_cluster,
                method_label(&r.method),
                self.status.get(usize::from(r.response_code)).map(String::as_str).unwrap_or("other"),
                flags,
            ])
            .inc();
    }

    pub fn connection_opened(&self, d: Direction) {
        let f = self.fast(d);
        f.conns_opened.inc();
        f.conns_active.inc();
    }

    pub fn connection_closed(&self, d: Direction) {
        let f = self.fast(d);
        f.conns_closed.inc();
        f.conns_active.dec();
    }

    pub fn connection_rejected(&self, d: Direction) {
        self.fast(d).conns_rejected.inc();
    }

    /// Counts one redirected connection by what its first bytes showed.
    pub fn protocol_detected(&self, d: Direction, result: Detection) {
        self.fast(d).detected[result as usize].inc();
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The registry, for components that register their own metrics (TLS, outbound).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Everything in the Prometheus text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// The standard process collector, with `process_cpu_seconds_total` in fractional seconds: the
/// crate's counts whole seconds only (0 while `/proc` shows 0.22 s), where every other Prometheus
/// client reports the fraction. Runs only on a scrape.
#[cfg(target_os = "linux")]
struct ProcessMetrics(prometheus::process_collector::ProcessCollector);

#[cfg(target_os = "linux")]
impl prometheus::core::Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut families = self.0.collect();
        if let Some(seconds) = cpu_seconds() {
            for family in families.iter_mut().filter(|f| f.name() == "process_cpu_seconds_total") {
                for metric in family.mut_metric() {
                    let mut counter = prometheus::proto::Counter::default();
                    counter.set_value(seconds);
                    metric.set_counter(counter);
                }
            }
        }
        families
    }
}

/// User plus system CPU time of the whole process (every thread), in seconds, at getrusage's
/// microsecond resolution.
#[cfg(target_os = "linux")]
fn cpu_seconds() -> Option<f64> {
    // SAFETY: rusage is plain data for which all-zero bits are valid; getrusage fills it.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return None;
        }
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(usage.ru_utime) + secs(usage.ru_stime))
}
