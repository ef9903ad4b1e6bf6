//! Rate-limited diagnostics: a repeated identical error (the app not up yet) is logged at most once
//! per interval, with the count of the ones suppressed in between.
//!
//! "Identical" means the same key (a reason code such as `UF`) and the same message, so a refused
//! connection to one upstream does not hide a refused connection to another.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Distinct errors remembered before the ones not seen for an interval are forgotten.
const PRUNE_AT: usize = 1024;

/// Logs each distinct error at most once per interval.
pub struct RateLimitedLog {
    interval: Duration,
    seen: Mutex<HashMap<(&'static str, String), Seen>>,
}

struct Seen {
    last: Instant,
    suppressed: u64,
}

impl RateLimitedLog {
    pub fn new(interval: Duration) -> Self {
        Self { interval, seen: Mutex::new(HashMap::new()) }
    }

    /// Warns about `err` under `key` unless the same error was logged within the interval; the
    /// next line that does come out carries `suppressed`, the number held back since the last one.
    pub fn warn(&self, key: &'static str, err: &dyn Display) {
        let message = err.to_string();
        if let Some(suppressed) = self.admit_message(key, &message) {
            if suppressed > 0 {
                tracing::warn!(code = key, suppressed, "{message}");
            } else {
                tracing::warn!(code = key, "{message}");
            }
        }
    }

    /// Returns `Some(suppressed since last time)` when this occurrence of `key` (with no message)
    /// should be logged, `None` when it is suppressed.
    pub fn admit(&self, key: &'static str) -> Option<u64> {
        self.admit_message(key, "")
    }

    /// Like [`RateLimitedLog::admit`], for the error `key` with this `message`.
    pub fn admit_message(&self, key: &'static str, message: &str) -> Option<u64> {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = seen.get_mut(&(key, message.to_owned())) {
            if now.duration_since(s.last) < self.interval {
                s.suppressed += 1;
                return None;
            }
            let suppressed = s.suppressed;
            *s = Seen { last: now, suppressed: 0 };
            return Some(suppressed);
        }
        if seen.len() >= PRUNE_AT {
            // Forget errors that have been quiet for an interval: their suppressed counts (if
            // any) are lost, which beats growing without bound.
            let interval = self.interval;
            seen.retain(|_, s| now.duration_since(s.last) < interval);
        }
        seen.insert((key, message.to_owned()), Seen { last: now, suppressed: 0 });
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_inside_the_interval_are_counted_not_logged() {
        let log = RateLimitedLog::new(Duration::from_secs(3600));
        assert_eq!(log.admit("UF"), Some(0));
        assert_eq!(log.admit("UF"), None);
        assert_eq!(log.admit("UF"), None);
        assert_eq!(log.admit("UC"), Some(0));
        assert_eq!(log.admit_message("UF", "refused by 127.0.0.1:1"), Some(0));
        assert_eq!(log.admit_message("UF", "refused by 127.0.0.1:2"), Some(0));
        assert_eq!(log.admit_message("UF", "refused by 127.0.0.1:1"), None);
    }

    #[test]
    fn the_map_stays_bounded() {
        let log = RateLimitedLog::new(Duration::ZERO);
        for i in 0..3 * PRUNE_AT {
            assert_eq!(log.admit_message("UF", &i.to_string()), Some(0));
        }
        assert!(log.seen.lock().map(|s| s.len()).unwrap_or(0) <= PRUNE_AT);
    }
}
