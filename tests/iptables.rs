//! `tandem iptables` against real iptables, in network namespaces this test creates (needs root,
//! `ip` and the iptables tools; skips with the reason otherwise). Each namespace is removed by a
//! drop guard, also when an assertion fails; nothing runs outside them.
//!
//! Both back ends are tried where their tools exist (`iptables-nft-*`, `iptables-legacy-*`): the
//! rules installed are what `--dry-run` printed, a second run leaves one set, `--cleanup` puts the
//! tables back exactly as they were, and the traffic goes where the rules say:
//!
//! ```text
//!  namespace "client"                      namespace "pod"
//!  10.233.9.2/30 ── veth ───────────────── 10.233.9.1/30
//!  listener 0.0.0.0:9999 ("elsewhere")     listeners: 0.0.0.0:15006 (inbound), 127.0.0.1:15001
//!                                          (outbound), 0.0.0.0:15020 (admin), 0.0.0.0:8080 (app)
//! ```
//!
//! Every listener answers one HTTP response whose body names it and the connection's original
//! destination (`SO_ORIGINAL_DST`), so a client sees where its connection landed.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const POD_IP: &str = "10.233.9.1";
const CLIENT_IP: &str = "10.233.9.2";

/// A network namespace of this test's own, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(role: &str) -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("tandem-ipt-{role}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }

    /// `PROGRAM ARGS` run inside the namespace.
    fn exec(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0, program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {program}: {e}"))
    }

    /// `tandem iptables ARGS` inside the namespace; it must succeed; its standard output.
    fn tandem(&self, args: &[&str]) -> String {
        let out = self.exec(support::bin(), &[&["iptables"], args].concat());
        assert!(out.status.success(), "tandem iptables {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `TOOL-save` inside the namespace, without comments and counters: the tables as a
    /// comparable text.
    fn save(&self, tool: &str) -> String {
        let out = self.exec(&format!("{tool}-save"), &[]);
        assert!(out.status.success(), "{tool}-save: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match (l.starts_with(':'), l.rfind(" [")) {
                (true, Some(at)) => &l[..at],
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn restore(&self, tool: &str, input: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0, &format!("{tool}-restore"), "--noflush"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn restore");
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write");
        let out = child.wait_with_output().expect("restore");
        assert!(out.status.success(), "{tool}-restore: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).stderr(Stdio::null()).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

fn found(tool: &str) -> bool {
    Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

fn skip_reason() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root to create network namespaces and install rules");
    }
    if !found("ip") {
        return Some("needs iproute2's ip (apt-get install iproute2)");
    }
    if backends().is_empty() {
        return Some("needs iptables-nft-* or iptables-legacy-* (apt-get install iptables)");
    }
    None
}

/// The back ends whose tools are installed here.
fn backends() -> Vec<&'static str> {
    ["nft", "legacy"].into_iter().filter(|b| found(&format!("iptables-{b}-restore"))).collect()
}

macro_rules! skip_unless_able {
    () => {
        if let Some(reason) = skip_reason() {
            println!("skipped: {reason}");
            return;
        }
    };
}

/// Rules of the test's own, in the tables tandem touches and in one it does not, so that what
/// surrounds tandem's rules is seen to survive.
const FOREIGN: &str = "*filter\n-A INPUT -p tcp -m tcp --dport 9 -j DROP\nCOMMIT\n\
                       *nat\n:FOREIGN - [0:0]\n-A FOREIGN -p udp -m udp --dport 5353 -j RETURN\n\
                       -A OUTPUT -p udp -j FOREIGN\nCOMMIT\n";

/// The `-A TANDEM_*` lines (tandem's own chains) of saved or printed restore input.
fn own_rules(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("-A TANDEM_")).collect()
}

#[test]
fn installs_what_dry_run_printed_once_however_often_it_runs_and_cleanup_restores_the_tables() {
    skip_unless_able!();
    for backend in backends() {
        let ns = Netns::new("rules");
        let family_tools = [format!("iptables-{backend}"), format!("ip6tables-{backend}")];
        for tool in &family_tools {
            ns.restore(tool, FOREIGN);
        }
        let before: Vec<String> = family_tools.iter().map(|t| ns.save(t)).collect();
        let args = ["--iptables-backend", backend, "--ipv6", "on", "--exclude-outbound-cidrs", "169.254.169.254/32"];

        // --dry-run changes nothing, and prints exactly what the real run then does.
        let dry = ns.tandem(&[&args[..], &["--dry-run"]].concat());
        let unchanged: Vec<String> = family_tools.iter().map(|t| ns.save(t)).collect();
        assert_eq!(unchanged, before, "{backend}: --dry-run changed the tables");
        let real = ns.tandem(&args);
        assert_eq!(real, dry, "{backend}: a real run does what --dry-run printed");

        let installed: Vec<String> = family_tools.iter().map(|t| ns.save(t)).collect();
        let (dry_v4, dry_v6) = dry.split_once("# IPv6").expect("both families printed");
        for (saved, printed) in installed.iter().zip([dry_v4, dry_v6]) {
            for chain in ["TANDEM_INBOUND", "TANDEM_IN_REDIRECT", "TANDEM_OUTPUT", "TANDEM_REDIRECT"] {
                assert!(saved.contains(&format!("\n:{chain} -")), "{backend}: no chain {chain} in\n{saved}");
            }
            // The save shows the printed rules unchanged, and each jump once.
            assert_eq!(own_rules(saved), own_rules(printed), "{backend}");
            assert_eq!(saved.matches("-A PREROUTING -p tcp -j TANDEM_INBOUND").count(), 1, "{saved}");
            assert_eq!(saved.matches("-A OUTPUT -p tcp -j TANDEM_OUTPUT").count(), 1, "{saved}");
            assert!(saved.contains("-A OUTPUT -p udp -j FOREIGN"), "the test's own rules stay: {saved}");
        }
        assert!(installed[0].contains("-A TANDEM_OUTPUT -d 169.254.169.254/32 -j RETURN"), "{}", installed[0]);
        assert!(installed[1].contains("-A TANDEM_OUTPUT ! -d ::1/128 -o lo"), "{}", installed[1]);

        // A second run leaves the same single set; its input appends no jump.
        let again = ns.tandem(&args);
        assert!(!again.contains("-A PREROUTING") && !again.contains("-A OUTPUT -p tcp"), "{again}");
        let twice: Vec<String> = family_tools.iter().map(|t| ns.save(t)).collect();
        assert_eq!(twice, installed, "{backend}: a second run changed the rules");

        // --cleanup puts both families' tables back exactly as they were; a second has nothing to do.
        ns.tandem(&["--iptables-backend", backend, "--ipv6", "on", "--cleanup"]);
        let after: Vec<String> = family_tools.iter().map(|t| ns.save(t)).collect();
        assert_eq!(after, before, "{backend}: --cleanup left the tables different");
        let nothing = ns.tandem(&["--iptables-backend", backend, "--ipv6", "on", "--cleanup"]);
        assert!(nothing.contains("nothing to remove") && !nothing.contains("-X"), "{nothing}");
    }
}

#[test]
fn the_automatic_back_end_is_the_one_already_holding_rules() {
    skip_unless_able!();
    if backends().len() < 2 {
        println!("skipped: needs both iptables-nft-* and iptables-legacy-*");
        return;
    }
    // An empty namespace: nft, which works in this kernel.
    let fresh = Netns::new("auto");
    fresh.tandem(&[]);
    assert!(fresh.save("iptables-nft").contains(":TANDEM_INBOUND"));
    assert!(!fresh.save("iptables-legacy").contains("TANDEM_"));
    // Rules in legacy (a CNI or an older init step): tandem's go beside them, and the cleanup
    // finds them there.
    let legacy = Netns::new("auto");
    legacy.restore("iptables-legacy", FOREIGN);
    let out = legacy.tandem(&["--ipv6", "off"]);
    assert!(out.contains("back end legacy: iptables-legacy-restore"), "{out}");
    assert!(legacy.save("iptables-legacy").contains(":TANDEM_INBOUND"));
    assert!(!legacy.save("iptables-nft").contains("TANDEM_"));
    legacy.tandem(&["--ipv6", "off", "--cleanup"]);
    assert!(!legacy.save("iptables-legacy").contains("TANDEM_"));
}

#[test]
fn without_net_admin_or_without_iptables_the_error_says_which() {
    skip_unless_able!();
    let ns = Netns::new("denied");
    // As tandem's own uid (no capabilities), inside the test's namespace.
    let out = ns.exec(
        "setpriv",
        &["--reuid=1337", "--regid=1337", "--clear-groups", support::bin(), "iptables", "--iptables-backend", "nft"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("NET_ADMIN needed: iptables-nft-save: permission denied"), "{err}");
    // With no iptables tool on PATH, the missing one is named, and nothing is run at all.
    let empty = std::env::temp_dir().join(format!("tandem-ipt-nopath-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("mkdir");
    for (args, missing) in [
        (vec![], "iptables-restore not found"),
        (vec!["--iptables-backend", "legacy"], "iptables-legacy-save not found"),
    ] {
        let out = Command::new(support::bin()).arg("iptables").args(&args).env("PATH", &empty).output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(missing), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir(&empty);
}

/// A listener in a namespace that answers every connection with its name and the connection's
/// original destination; stopped (and joined) on drop.
struct Landing {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Landing {
    fn start(ns: &Netns, name: &'static str, addr: &str) -> Landing {
        let path = format!("/var/run/netns/{}", ns.0);
        let addr: SocketAddr = addr.parse().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            enter(&path);
            let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("{name}: bind {addr}: {e}"));
            listener.set_nonblocking(true).expect("nonblocking");
            bound_tx.send(()).expect("bound");
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stopping.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((conn, _)) => answer(conn, name),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => panic!("{name}: accept: {e}"),
                }
            }
        });
        bound_rx.recv_timeout(Duration::from_secs(10)).expect("the listener bound");
        Landing { stop, thread: Some(thread) }
    }
}

impl Drop for Landing {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Moves this thread into the namespace at `path`.
fn enter(path: &str) {
    let file = std::fs::File::open(path).expect("open the namespace");
    // SAFETY: setns moves only this thread into the namespace; the descriptor is valid.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// Reads the request head, then answers `NAME ORIGINAL-DESTINATION` (`-` when not redirected).
/// Once the kernel tracks connections (the NAT rules load it), `SO_ORIGINAL_DST` answers for
/// every connection, with the local address itself when nothing rewrote it.
fn answer(mut conn: TcpStream, name: &str) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let local = conn.local_addr().ok();
    let redirected = original_destination(&conn).filter(|a| Some(SocketAddr::V4(*a)) != local);
    let body = format!("{name} {}", redirected.map_or("-".to_owned(), |a| a.to_string()));
    let _ = write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
}

/// `SO_ORIGINAL_DST`: where the connection was sent before any NAT; `None` when the kernel does
/// not track it.
fn original_destination(conn: &TcpStream) -> Option<SocketAddrV4> {
    // SAFETY: a zeroed sockaddr_in is valid; getsockopt writes at most `len` bytes into it.
    unsafe {
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&mut sa as *mut libc::sockaddr_in).cast(),
            &mut len,
        );
        (rc == 0).then(|| SocketAddrV4::new(u32::from_be(sa.sin_addr.s_addr).into(), u16::from_be(sa.sin_port)))
    }
}

/// From inside `ns`, as root or as `uid`: an HTTP GET to `addr` with curl; the body it got.
fn landed(ns: &Netns, uid: Option<u32>, addr: &str) -> String {
    let url = format!("http://{addr}/");
    let curl = ["curl", "-sS", "--max-time", "10", "--noproxy", "*", url.as_str()];
    let ids = uid.map(|u| [format!("--reuid={u}"), format!("--regid={u}")]);
    let out = match &ids {
        Some([reuid, regid]) => {
            ns.exec("setpriv", &[&[reuid.as_str(), regid.as_str(), "--clear-groups"][..], &curl].concat())
        }
        None => ns.exec(curl[0], &curl[1..]),
    };
    assert!(out.status.success(), "curl {addr} as {uid:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn connections_land_where_the_rules_send_them_and_tandems_own_are_not_redirected() {
    skip_unless_able!();
    if !found("curl") || !found("setpriv") {
        println!("skipped: needs curl and setpriv (util-linux)");
        return;
    }
    for backend in backends() {
        let pod = Netns::new("pod");
        let client = Netns::new("client");
        ip(&["-n", &pod.0, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &client.0]);
        for (ns, addr) in [(&pod, POD_IP), (&client, CLIENT_IP)] {
            ip(&["-n", &ns.0, "addr", "add", &format!("{addr}/30"), "dev", "eth0"]);
            ip(&["-n", &ns.0, "link", "set", "eth0", "up"]);
        }
        let _listeners = [
            Landing::start(&pod, "inbound", "0.0.0.0:15006"),
            Landing::start(&pod, "outbound", "127.0.0.1:15001"),
            Landing::start(&pod, "admin", "0.0.0.0:15020"),
            Landing::start(&pod, "app", "0.0.0.0:8080"),
            Landing::start(&client, "elsewhere", "0.0.0.0:9999"),
        ];
        // Before the rules, everything goes where it is sent.
        assert_eq!(landed(&client, None, &format!("{POD_IP}:8080")), "app -");
        pod.tandem(&["--iptables-backend", backend]);

        // Into the pod: to the inbound listener, which reads the port the client asked for.
        assert_eq!(landed(&client, None, &format!("{POD_IP}:8080")), format!("inbound {POD_IP}:8080"), "{backend}");
        assert_eq!(landed(&client, None, &format!("{POD_IP}:7000")), format!("inbound {POD_IP}:7000"), "{backend}");
        // The admin port is never redirected: probes and scrapes reach tandem itself.
        assert_eq!(landed(&client, None, &format!("{POD_IP}:15020")), "admin -", "{backend}");
        // Out of the pod, by the app (root here): to the outbound listener.
        assert_eq!(landed(&pod, None, &format!("{CLIENT_IP}:9999")), format!("outbound {CLIENT_IP}:9999"), "{backend}");
        // By tandem's uid: not redirected, so tandem's own connections leave the pod.
        assert_eq!(landed(&pod, Some(1337), &format!("{CLIENT_IP}:9999")), "elsewhere -", "{backend}");
        // Another uid is redirected like the app.
        assert_eq!(
            landed(&pod, Some(4242), &format!("{CLIENT_IP}:9999")),
            format!("outbound {CLIENT_IP}:9999"),
            "{backend}"
        );
        // The app calling loopback or its own pod address reaches the app directly.
        assert_eq!(landed(&pod, None, "127.0.0.1:8080"), "app -", "{backend}");
        assert_eq!(landed(&pod, Some(4242), &format!("{POD_IP}:8080")), "app -", "{backend}");
        // tandem calling the pod's own address goes through the inbound side (Istio's self-call
        // rule), and tandem calling loopback (how the inbound side reaches the app) does not.
        assert_eq!(landed(&pod, Some(1337), &format!("{POD_IP}:8080")), format!("inbound {POD_IP}:8080"));
        assert_eq!(landed(&pod, Some(1337), "127.0.0.1:8080"), "app -", "{backend}");

        pod.tandem(&["--iptables-backend", backend, "--cleanup"]);
        assert_eq!(landed(&client, None, &format!("{POD_IP}:8080")), "app -", "{backend}: after --cleanup");
    }
}
