//! The inbound and admin listeners on their default address take IPv4 and IPv6 clients alike (a
//! dual-stack pod), and a client's address is reported in its own family.

mod support;

use std::net::SocketAddr;
use support::{config, echo, get, proxy};
use tandem::config::{Config, Human};

#[tokio::test]
async fn the_default_listen_address_takes_ipv4_and_ipv6_clients() {
    let defaults = Config::default();
    let app = echo().await;
    let mut c = config(app.addr);
    // The defaults' addresses, on ports the kernel picks.
    c.inbound.listen = Human::new(SocketAddr::new(defaults.inbound.listen.value.ip(), 0));
    c.admin.listen = Human::new(SocketAddr::new(defaults.admin.listen.value.ip(), 0));
    let p = proxy(c).await;
    let (inbound, admin) = (p.inbound_addr.port(), p.admin_addr.port());

    let (status, _, body) = get(&format!("http://127.0.0.1:{inbound}/v4")).await;
    assert_eq!(status, 200);
    let j: serde_json::Value = serde_json::from_slice(&body).expect("json");
    // Not "::ffff:127.0.0.1": an IPv4 client on a dual-stack socket is reported as IPv4.
    assert_eq!(j["headers"]["x-forwarded-for"], "127.0.0.1", "{j}");
    assert_eq!(get(&format!("http://127.0.0.1:{admin}/live")).await.0, 200);

    if let Err(e) = std::net::TcpListener::bind("[::1]:0") {
        println!("skipped the IPv6 half: this host has no ::1 ({e})");
        return;
    }
    let (status, _, body) = get(&format!("http://[::1]:{inbound}/v6")).await;
    assert_eq!(status, 200);
    let j: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(j["headers"]["x-forwarded-for"], "::1", "{j}");
    assert_eq!(get(&format!("http://[::1]:{admin}/live")).await.0, 200);
}
