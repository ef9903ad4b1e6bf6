//! The worker thread count: follows the container's CPU limit (cgroup v2 `cpu.max`, v1 CFS quota),
//! at least 1, never more than the machine's cores, overridable.

use std::path::Path;

/// Where the count came from, for the startup log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workers {
    pub count: usize,
    pub source: String,
}

/// Chooses the worker count: `configured` if non-zero, else the cgroup CPU limit rounded up, else
/// the number of available cores.
pub fn workers(configured: usize) -> Workers {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if configured > 0 {
        return Workers { count: configured, source: "configured".into() };
    }
    match cgroup_cpu_limit(Path::new("/sys/fs/cgroup")) {
        Some(limit) => Workers {
            count: limit.ceil().max(1.0).min(cores as f64) as usize,
            source: format!("cgroup CPU limit {limit:.2}"),
        },
        None => Workers { count: cores, source: "available cores (no cgroup CPU limit)".into() },
    }
}

/// The CPU limit in cores from a cgroup root: v2 `cpu.max` (`quota period` or `max period`), or v1
/// `cpu/cpu.cfs_quota_us` and `cpu/cpu.cfs_period_us` (`-1` quota means no limit).
pub fn cgroup_cpu_limit(root: &Path) -> Option<f64> {
    if let Ok(s) = std::fs::read_to_string(root.join("cpu.max")) {
        return parse_cpu_max(&s);
    }
    let v1 = root.join("cpu");
    let quota = std::fs::read_to_string(v1.join("cpu.cfs_quota_us")).ok()?;
    let period = std::fs::read_to_string(v1.join("cpu.cfs_period_us")).ok()?;
    let quota: i64 = quota.trim().parse().ok()?;
    let period: i64 = period.trim().parse().ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// Parses cgroup v2 `cpu.max`.
pub fn parse_cpu_max(s: &str) -> Option<f64> {
    let mut it = s.split_whitespace();
    let quota = it.next()?;
    let period: f64 = it.next().unwrap_or("100000").parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let quota: f64 = quota.parse().ok()?;
    (quota > 0.0).then(|| quota / period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_parses() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(0.5));
        assert_eq!(parse_cpu_max("250000 100000"), Some(2.5));
    }

    #[test]
    fn cgroup_v1_and_v2_layouts_are_read() {
        let dir = std::env::temp_dir().join(format!("tandem-cg-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("v2")).expect("mkdir");
        std::fs::write(dir.join("v2/cpu.max"), "150000 100000\n").expect("write");
        assert_eq!(cgroup_cpu_limit(&dir.join("v2")), Some(1.5));
        std::fs::create_dir_all(dir.join("v1/cpu")).expect("mkdir");
        std::fs::write(dir.join("v1/cpu/cpu.cfs_quota_us"), "-1\n").expect("write");
        std::fs::write(dir.join("v1/cpu/cpu.cfs_period_us"), "100000\n").expect("write");
        assert_eq!(cgroup_cpu_limit(&dir.join("v1")), None);
        std::fs::write(dir.join("v1/cpu/cpu.cfs_quota_us"), "200000\n").expect("write");
        assert_eq!(cgroup_cpu_limit(&dir.join("v1")), Some(2.0));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
