//! `tandem demo`, the first command a new user runs: it starts on its usual ports, and when one of
//! them is taken it moves to a free port and says where.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::procs::{get, Proc};
use support::{bin, poll};

/// The address after `curl -i http://` in the demo's banner.
fn banner_addr(stdout: &str) -> Option<SocketAddr> {
    let rest = &stdout[stdout.find("curl -i http://")? + "curl -i http://".len()..];
    rest[..rest.find('/')?].parse().ok()
}

#[tokio::test]
async fn demo_moves_to_a_free_port_when_15006_is_taken_and_says_so() {
    // Hold 15006 for the demo's lifetime; if something else holds it already, it is taken all the same.
    let held = match std::net::TcpListener::bind("127.0.0.1:15006") {
        Ok(l) => Some(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            println!("127.0.0.1:15006 is already taken by another process: the demo must move all the same");
            None
        }
        Err(e) => {
            println!("skipped: cannot bind 127.0.0.1:15006 to occupy it: {e}");
            return;
        }
    };
    let out = std::env::temp_dir().join(format!("tandem-demo-{}.stdout", std::process::id()));
    let file = std::fs::File::create(&out).expect("stdout file");
    let mut cmd = Command::new(bin());
    cmd.arg("demo").stdout(Stdio::from(file)).env_remove("RUST_LOG");
    let mut p = Proc::start("demo", cmd);
    let stdout = poll(Duration::from_secs(30), "the demo's banner", || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        assert!(p.exited().is_none(), "the demo exited; stdout:\n{text}\nstderr:\n{}", p.stderr());
        text.contains("Ctrl-C stops it.").then_some(text)
    })
    .await;
    let proxy = banner_addr(&stdout).unwrap_or_else(|| panic!("no proxy address in:\n{stdout}"));
    assert_ne!(proxy.port(), 15006, "{stdout}");
    assert!(
        stdout.contains(&format!("127.0.0.1:15006 is in use; the proxy listens on {proxy} instead")),
        "the demo says where it moved:\n{stdout}"
    );
    let (status, _, body) = get(proxy, "/hello").await.expect("the demo's proxy answers");
    assert_eq!(status, 200, "{body:?}");
    p.signal(libc::SIGTERM);
    assert_eq!(p.exit(Duration::from_secs(30)).await.code(), Some(0));
    drop(held);
    let _ = std::fs::remove_file(&out);
}
