//! Memory given back to the system after a burst of connections. glibc's malloc keeps what a
//! burst freed: each worker thread allocates from an arena of its own, and the pages freed in the
//! middle of an arena stay with the process, so 1,000 keep-alive connections opened and closed
//! took tandem from 5.5 MiB to 29 MiB resident for good. Once the connections open have fallen
//! to half their peak, `malloc_trim(0)` hands the free pages of every arena back.
//!
//! Off the request path: a background task looks at the connection counts once a second, and
//! trims (on the blocking pool) at most once a second, only after a burst has ended. Other
//! allocators (the `jemalloc` and `mimalloc` features) return memory on their own; with them the
//! trim finds glibc's heap all but empty and costs nothing.

use crate::lifecycle::shutdown::Tracker;
use std::sync::Arc;
use std::time::Duration;

/// How often the connection counts are looked at.
const TICK: Duration = Duration::from_secs(1);

/// Connections that must have closed since the peak for a trim: fewer free too little to matter.
const BURST: usize = 64;

/// Runs for the life of the process: after each burst of connections (counted by `trackers`)
/// has fallen to half its peak, gives the memory it freed back to the system.
pub async fn give_back_after_bursts(trackers: Vec<Arc<Tracker>>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut high = 0usize;
    loop {
        tick.tick().await;
        let peak: usize = trackers.iter().map(|t| t.take_peak()).sum();
        let open: usize = trackers.iter().map(|t| t.count()).sum();
        high = high.max(peak);
        if should_trim(high, open) {
            // A trim walks every arena: milliseconds for a large heap, so not on a worker.
            let _ = tokio::task::spawn_blocking(trim).await;
            high = open;
        }
    }
}

/// Whether `open` connections, after a peak of `high`, is the end of a burst worth a trim.
fn should_trim(high: usize, open: usize) -> bool {
    high >= open + BURST && open <= high / 2
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes no pointer and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_follows_a_burst_that_has_ended_and_nothing_else() {
        assert!(should_trim(1000, 0));
        assert!(should_trim(1000, 500));
        assert!(!should_trim(1000, 501), "still more than half open");
        assert!(!should_trim(63, 0), "too few connections to matter");
        assert!(!should_trim(0, 0));
    }

    #[test]
    fn the_peak_is_seen_after_the_connections_have_closed() {
        let t = Tracker::new();
        let _listener = t.listening();
        let conns: Vec<_> = (0..100).map(|_| t.open()).collect();
        drop(conns);
        assert_eq!(t.count(), 0);
        assert_eq!(t.take_peak(), 100);
        assert_eq!(t.take_peak(), 0, "read once");
    }
}
