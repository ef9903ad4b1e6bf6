//! Network namespaces for the root tests: a pair joined by a veth link (removed on drop, also
//! when an assertion fails), and running code inside one.

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

/// Runs `program args`, failing the test with its stderr when it fails.
pub fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(out.status.success(), "{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Two namespaces, `pod` and `client`, with loopback up and a veth pair (`eth0` in each) carrying
/// `pod_ip/30` and `client_ip/30`. Both go (and the veth pair with them) when this is dropped.
pub struct Pair {
    pub pod: String,
    pub client: String,
}

impl Pair {
    /// `tag` makes the names unique among tests; the process id among runs.
    pub fn new(tag: &str, pod_ip: &str, client_ip: &str) -> Self {
        let id = std::process::id();
        let pair = Pair { pod: format!("tdm-{tag}-pod-{id}"), client: format!("tdm-{tag}-cli-{id}") };
        for ns in [&pair.pod, &pair.client] {
            run("ip", &["netns", "add", ns]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        run(
            "ip",
            &["-n", &pair.pod, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &pair.client],
        );
        for (ns, addr) in [(&pair.pod, pod_ip), (&pair.client, client_ip)] {
            run("ip", &["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", "eth0"]);
            run("ip", &["-n", ns, "link", "set", "eth0", "up"]);
        }
        pair
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Removing a namespace removes its end of the veth pair, and with it the other end.
        for ns in [&self.pod, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
    }
}

/// Runs `f` on a thread that has joined network namespace `ns` (sockets it makes live there).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open the namespace");
        // SAFETY: setns moves only this thread into the namespace; the descriptor is valid.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("namespace thread")
}

/// Sends SIGTERM to `child` (a process the test started) by its PID and waits, at most 30 s, for
/// it to exit.
pub fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    // SAFETY: signals a process this test started, by its PID.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let start = std::time::Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "the process did not exit");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
