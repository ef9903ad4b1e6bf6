//! Rate-limited diagnostics: a repeated identical error (the app not up yet) is logged at most once
//! per interval, with the count of the ones suppressed in between.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Logs each key at most once per interval.
pub struct RateLimitedLog {
    interval: Duration,
    seen: Mutex<HashMap<&'static str, (Option<Instant>, u64)>>,
}

impl RateLimitedLog {
    pub fn new(interval: Duration) -> Self {
        Self { interval, seen: Mutex::new(HashMap::new()) }
    }

    /// Warns about `err` under `key` unless the same key was logged within the interval.
    pub fn warn(&self, key: &'static str, err: &dyn Display) {
        if let Some(suppressed) = self.admit(key) {
            if suppressed > 0 {
                tracing::warn!(code = key, suppressed, "{err}");
            } else {
                tracing::warn!(code = key, "{err}");
            }
        }
    }

    /// Returns `Some(suppressed since last time)` when this occurrence should be logged.
    pub fn admit(&self, key: &'static str) -> Option<u64> {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let entry = seen.entry(key).or_insert((None, 0));
        if entry.0.is_none_or(|last| now.duration_since(last) >= self.interval) {
            let suppressed = entry.1;
            *entry = (Some(now), 0);
            Some(suppressed)
        } else {
            entry.1 += 1;
            None
        }
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
    }
}
