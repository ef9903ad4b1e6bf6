//! Admission, written once for every server and both directions: a request takes an in-flight
//! slot or is shed at once (503 `UO`; nothing queues), and its head must fit the configured
//! limits (431 `DPE`). The texts of both refusals are made here and nowhere else.

use crate::config::{Limits, Timeouts};
use crate::proxy::error::ProxyError;
use crate::telemetry::record::{Finish, InFlight, RequestRecord};
use crate::telemetry::Telemetry;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A side's values that a reload may change and that a request reads: taken once, when the
/// request is admitted (one load, copied, nothing allocated), and kept for the request's life, so
/// a request in flight finishes under the configuration it started with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SideRules {
    pub max_in_flight: usize,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    /// `timeouts.response`.
    pub response_timeout: Duration,
    /// `timeouts.idle` (outbound: a `CONNECT` tunnel that moves nothing this long is closed).
    pub idle_timeout: Duration,
}

impl SideRules {
    pub fn new(timeouts: &Timeouts, limits: &Limits) -> Self {
        Self {
            max_in_flight: limits.max_in_flight,
            max_headers: limits.max_headers,
            max_header_bytes: limits.max_header_bytes.value.0 as usize,
            response_timeout: timeouts.response.value,
            idle_timeout: timeouts.idle.value,
        }
    }

    /// The head limits for a request of `fields` header fields and `bytes` bytes of target and
    /// fields (each field counted as `name: value` and its line end).
    pub fn head(&self, fields: usize, bytes: usize) -> Option<ProxyError> {
        if fields > self.max_headers {
            Some(ProxyError::HeadersTooLarge {
                what: format!("{fields} header fields, the limit is {}", self.max_headers),
            })
        } else if bytes > self.max_header_bytes {
            Some(ProxyError::HeadersTooLarge {
                what: format!("request head of {bytes} bytes, the limit is {}", self.max_header_bytes),
            })
        } else {
            None
        }
    }

    /// [`SideRules::head`] for a request hyper or the HTTP/2 server parsed.
    pub fn parts(&self, parts: &http::request::Parts) -> Option<ProxyError> {
        let mut size = target_len(&parts.uri);
        for (name, value) in &parts.headers {
            size += name.as_str().len() + value.len() + 4;
        }
        self.head(parts.headers.len(), size)
    }
}

/// One side's admission rules and its in-flight count (both shared by its workers).
#[derive(Clone)]
pub struct Admission {
    in_flight: Arc<AtomicUsize>,
    rules: Arc<ArcSwap<SideRules>>,
}

/// What [`Admission::enter`] gives a request.
pub struct Entered {
    /// The request's once-only report, holding its in-flight slot.
    pub finish: Finish,
    /// The rules in force when it was admitted, for the rest of its life.
    pub rules: SideRules,
    /// The refusal, when the slot is over `max_in_flight`.
    pub over: Option<ProxyError>,
}

impl Admission {
    pub fn new(rules: SideRules) -> Self {
        Self { in_flight: Arc::new(AtomicUsize::new(0)), rules: Arc::new(ArcSwap::from_pointee(rules)) }
    }

    /// Starts a request's once-only report and takes its in-flight slot (given back when the
    /// report is made), with the rules in force now.
    pub fn enter(
        &self,
        record: RequestRecord,
        received: Option<Arc<AtomicU64>>,
        telemetry: &Arc<Telemetry>,
    ) -> Entered {
        let rules = **self.rules.load();
        let now = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let finish = Finish::new(record, received, telemetry.clone()).with_guard(InFlight(self.in_flight.clone()));
        let over = (now >= rules.max_in_flight).then_some(ProxyError::TooManyRequests { limit: rules.max_in_flight });
        Entered { finish, rules, over }
    }

    /// The rules in force now.
    pub fn rules(&self) -> SideRules {
        **self.rules.load()
    }

    /// Puts `rules` in force for every request admitted from now on (a reload).
    pub fn set(&self, rules: SideRules) {
        self.rules.store(Arc::new(rules));
    }

    /// The configured most header fields (the HTTP/1.1 server parses up to this many).
    pub fn max_headers(&self) -> usize {
        self.rules.load().max_headers
    }

    /// Requests in flight right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// The request target's length as sent, without formatting it.
pub fn target_len(uri: &http::Uri) -> usize {
    let scheme = uri.scheme_str().map(|s| s.len() + 3).unwrap_or(0);
    let authority = uri.authority().map(|a| a.as_str().len()).unwrap_or(0);
    let path = uri.path_and_query().map(|p| p.as_str().len()).unwrap_or(1);
    scheme + authority + path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_limits_count_fields_then_bytes() {
        let a = SideRules {
            max_in_flight: 10,
            max_headers: 2,
            max_header_bytes: 100,
            response_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        };
        assert!(a.head(2, 100).is_none());
        let fields = a.head(3, 10).expect("too many fields");
        assert_eq!(fields.to_string(), "request header fields too large (DPE): 3 header fields, the limit is 2");
        let bytes = a.head(1, 101).expect("too many bytes");
        assert_eq!(bytes.status().as_u16(), 431);
    }
}
