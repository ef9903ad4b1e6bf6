//! The worker thread count: follows the container's CPU limit (cgroup v2 `cpu.max`, v1 CFS quota),
//! at least 1, never more than the cores the process may run on, overridable (`--workers`,
//! `runtime.workers`).
//!
//! The limit is read from the process's own cgroup (`/proc/self/cgroup`) and every ancestor up to
//! the mount point, keeping the smallest: a pod-level limit constrains a container that has none of
//! its own. Inside a container with its own cgroup namespace the process's cgroup is the mount
//! root, so the container's limit is read directly.

use std::path::{Path, PathBuf};

/// Where the count came from, for the startup log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workers {
    pub count: usize,
    pub source: String,
}

/// Chooses the worker count for this process: `configured` if non-zero, else the cgroup CPU limit
/// rounded up, else the number of cores available.
pub fn workers(configured: usize) -> Workers {
    let cores = cores_allowed();
    let self_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let limit = if configured > 0 { None } else { detect_cpu_limit(Path::new("/sys/fs/cgroup"), &self_cgroup) };
    choose(configured, limit, cores)
}

/// The CPUs this process may run on (its affinity mask). Not `available_parallelism()`: that
/// also applies the cgroup quota, rounded down, so a limit of 1.5 would cap the workers at 1.
fn cores_allowed() -> usize {
    // SAFETY: cpu_set_t is plain data that all-zero bits make a valid empty set; sched_getaffinity
    // writes at most size_of::<cpu_set_t>() bytes into it.
    let count = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            libc::CPU_COUNT(&set) as usize
        } else {
            0
        }
    };
    if count > 0 {
        count
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// The choice itself: `configured` wins; a CPU limit is rounded up, at least 1 and at most `cores`.
pub fn choose(configured: usize, limit: Option<f64>, cores: usize) -> Workers {
    let cores = cores.max(1);
    if configured > 0 {
        return Workers { count: configured, source: "configured".into() };
    }
    match limit {
        Some(limit) => Workers {
            count: (limit.ceil().max(1.0) as usize).min(cores),
            source: format!("cgroup CPU limit {limit:.2}"),
        },
        None => Workers { count: cores, source: "available cores (no cgroup CPU limit)".into() },
    }
}

/// The CPU limit in cores for a process whose `/proc/self/cgroup` reads `self_cgroup`, with the
/// cgroup filesystems mounted under `root`: the smallest limit of its cgroup and its ancestors.
/// cgroup v2 is tried first (`0::/path`), then v1 (the hierarchy with the `cpu` controller).
pub fn detect_cpu_limit(root: &Path, self_cgroup: &str) -> Option<f64> {
    let mut v2_path = None;
    let mut v1_path = None;
    for line in self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2_path = Some(path);
        } else if controllers.split(',').any(|c| c == "cpu") {
            v1_path = Some(path);
        }
    }
    if root.join("cpu.max").exists() || root.join("cgroup.controllers").exists() {
        return smallest_up(root, v2_path.unwrap_or("/"), |dir| {
            std::fs::read_to_string(dir.join("cpu.max")).ok().and_then(|s| parse_cpu_max(&s))
        });
    }
    ["cpu", "cpu,cpuacct", "cpuacct,cpu"].iter().map(|m| root.join(m)).filter(|base| base.is_dir()).find_map(|base| {
        smallest_up(&base, v1_path.unwrap_or("/"), |dir| {
            let quota = std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).ok()?;
            let period = std::fs::read_to_string(dir.join("cpu.cfs_period_us")).ok()?;
            parse_cfs(&quota, &period)
        })
    })
}

/// The smallest limit found in `base/path` and each ancestor up to `base`. When `path` does not
/// exist under `base` (a v1 container mounts its own cgroup at the mount point while
/// `/proc/self/cgroup` still shows the host path), only `base` itself is read.
fn smallest_up(base: &Path, path: &str, read: impl Fn(&Path) -> Option<f64>) -> Option<f64> {
    let mut dir: PathBuf = base.join(path.trim_start_matches('/'));
    if !dir.is_dir() {
        dir = base.to_path_buf();
    }
    let mut best: Option<f64> = None;
    loop {
        if let Some(l) = read(&dir) {
            best = Some(best.map_or(l, |b| b.min(l)));
        }
        if dir == base {
            return best;
        }
        match dir.parent() {
            Some(p) if p.starts_with(base) => dir = p.to_path_buf(),
            _ => return best,
        }
    }
}

/// The CPU limit in cores read from a cgroup root alone: v2 `cpu.max`, or v1 `cpu/cpu.cfs_quota_us`
/// and `cpu/cpu.cfs_period_us` (`-1` quota means no limit).
pub fn cgroup_cpu_limit(root: &Path) -> Option<f64> {
    detect_cpu_limit(root, "")
}

/// Parses cgroup v2 `cpu.max` (`quota period` or `max period`).
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

/// Parses cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`.
pub fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: i64 = period.trim().parse().ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let p = std::env::temp_dir().join(format!("tandem-cg-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("mkdir");
            Self(p)
        }
        fn write(&self, rel: &str, content: &str) {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, content).expect("write");
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn cpu_max_parses() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(0.5));
        assert_eq!(parse_cpu_max("250000 100000"), Some(2.5));
        assert_eq!(parse_cpu_max("garbage"), None);
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("150000\n", "100000\n"), Some(1.5));
    }

    #[test]
    fn cgroup_v1_and_v2_layouts_are_read() {
        let t = TempDir::new("layouts");
        t.write("v2/cpu.max", "150000 100000\n");
        assert_eq!(cgroup_cpu_limit(&t.0.join("v2")), Some(1.5));
        t.write("v1/cpu/cpu.cfs_quota_us", "-1\n");
        t.write("v1/cpu/cpu.cfs_period_us", "100000\n");
        assert_eq!(cgroup_cpu_limit(&t.0.join("v1")), None);
        t.write("v1/cpu/cpu.cfs_quota_us", "200000\n");
        assert_eq!(cgroup_cpu_limit(&t.0.join("v1")), Some(2.0));
        assert_eq!(cgroup_cpu_limit(&t.0.join("nothing")), None);
    }

    #[test]
    fn the_smallest_limit_on_the_way_up_wins() {
        let t = TempDir::new("hierarchy");
        // cgroup v2 on a host without a cgroup namespace: the pod has 0.5 CPU, the container none.
        t.write("v2/cgroup.controllers", "cpu memory\n");
        t.write("v2/cpu.max", "max 100000\n");
        t.write("v2/kubepods/pod1/cpu.max", "50000 100000\n");
        t.write("v2/kubepods/pod1/ctr/cpu.max", "max 100000\n");
        assert_eq!(detect_cpu_limit(&t.0.join("v2"), "0::/kubepods/pod1/ctr\n"), Some(0.5));
        // The same process inside its own cgroup namespace sees its cgroup at the root.
        assert_eq!(detect_cpu_limit(&t.0.join("v2/kubepods/pod1"), "0::/\n"), Some(0.5));
        // cgroup v1 with cpu and cpuacct mounted together, a container limit of 2 under a pod of 3.
        t.write("v1/cpu,cpuacct/kubepods/pod2/cpu.cfs_quota_us", "300000\n");
        t.write("v1/cpu,cpuacct/kubepods/pod2/cpu.cfs_period_us", "100000\n");
        t.write("v1/cpu,cpuacct/kubepods/pod2/ctr/cpu.cfs_quota_us", "200000\n");
        t.write("v1/cpu,cpuacct/kubepods/pod2/ctr/cpu.cfs_period_us", "100000\n");
        let v1 = "4:memory:/kubepods/pod2/ctr\n2:cpu,cpuacct:/kubepods/pod2/ctr\n";
        assert_eq!(detect_cpu_limit(&t.0.join("v1"), v1), Some(2.0));
        // A v1 container whose own cgroup is mounted at the mount point: the host path is absent.
        t.write("v1b/cpu/cpu.cfs_quota_us", "100000\n");
        t.write("v1b/cpu/cpu.cfs_period_us", "100000\n");
        assert_eq!(detect_cpu_limit(&t.0.join("v1b"), "1:cpu:/docker/abc\n"), Some(1.0));
    }

    #[test]
    fn worker_count_rounds_up_is_at_least_one_and_at_most_the_cores() {
        assert_eq!(choose(0, Some(0.25), 8).count, 1);
        assert_eq!(choose(0, Some(1.5), 8).count, 2);
        assert_eq!(choose(0, Some(16.0), 4).count, 4);
        assert_eq!(choose(0, None, 4).count, 4);
        assert_eq!(choose(0, None, 0).count, 1);
        let w = choose(3, Some(1.0), 8);
        assert_eq!((w.count, w.source.as_str()), (3, "configured"));
        assert_eq!(choose(0, Some(0.5), 8).source, "cgroup CPU limit 0.50");
    }
}
