//! The header rewriting every forwarded request and response goes through, on the header maps
//! of the HTTP/2 server and of the outbound proxy (hop-by-hop removal, `x-forwarded-*`, request
//! id); the HTTP/1.1 server applies the same rules (one list, [`crate::base::fields`]) to the
//! bytes of a head.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::SocketAddr;

/// The header [`set_forwarded`] appends the client's address to.
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub use crate::telemetry::record::{X_FORWARDED_FOR, X_REQUEST_ID};
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether a request asks for an HTTP/1.1 protocol upgrade (WebSocket and friends).
pub fn wants_upgrade(headers: &HeaderMap, version: http::Version) -> bool {
    version == http::Version::HTTP_11 && headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| v.to_str().map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))).unwrap_or(false))
}

/// Removes hop-by-hop headers (RFC 9110 section 7.6.1): `Connection` and every field it names,
/// `Keep-Alive`, `Proxy-Connection`, `TE` (except `TE: trailers`), `Transfer-Encoding`, and
/// `Upgrade` unless this message is part of an upgrade, in which case `Connection: upgrade` and
/// `Upgrade` are kept.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none of these: one pass over the names instead of six hashed lookups.
    if !upgrade && !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        // Fields named by Connection. Almost always just `keep-alive`, `close` or `upgrade`, which
        // name no field to remove here (`keep-alive` is removed below anyway): only other tokens
        // cost a parse and an allocation.
        let mut named: Vec<HeaderName> = Vec::new();
        for v in headers.get_all(header::CONNECTION) {
            let Ok(s) = v.to_str() else { continue };
            for t in s.split(',') {
                let t = t.trim();
                if t.is_empty()
                    || t.eq_ignore_ascii_case("keep-alive")
                    || t.eq_ignore_ascii_case("close")
                    || t.eq_ignore_ascii_case("upgrade")
                {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(t.as_bytes()) {
                    named.push(n);
                }
            }
        }
        for n in named {
            headers.remove(&n);
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    if let Some(te) = headers.get(header::TE) {
        let trailers =
            te.to_str().map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers"))).unwrap_or(false);
        headers.remove(header::TE);
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Whether `name` is one of the fields [`strip_hop_by_hop`] may remove or rewrite (fields named in
/// `Connection` are found through `Connection` itself).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::TE || crate::base::fields::hop_by_hop_name(name)
}

/// Appends the peer to `x-forwarded-for` and sets `x-forwarded-proto`.
pub fn set_forwarded(headers: &mut HeaderMap, peer: SocketAddr, proto: &'static str) {
    if let Some(ip) = peer_ip_value(peer) {
        set_forwarded_ip(headers, &ip, proto);
    }
}

/// The peer's IP as a header value: made once per connection by callers that forward many
/// requests from the same peer (see [`set_forwarded_ip`]).
pub fn peer_ip_value(peer: SocketAddr) -> Option<HeaderValue> {
    HeaderValue::from_str(&peer.ip().to_string()).ok()
}

/// [`set_forwarded`] with the peer's IP already made into a header value: when the client sent
/// no `x-forwarded-for`, the value is shared, not formatted again.
pub fn set_forwarded_ip(headers: &mut HeaderMap, ip: &HeaderValue, proto: &'static str) {
    let appended = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => {
            let mut s = String::with_capacity(prev.len() + 2 + ip.len());
            s.push_str(prev);
            s.push_str(", ");
            s.push_str(ip.to_str().unwrap_or(""));
            HeaderValue::from_str(&s).ok()
        }
        _ => Some(ip.clone()),
    };
    if let Some(v) = appended {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
}

/// Keeps the client's `x-request-id` or generates a UUIDv4 one; returns the value used.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        if !v.is_empty() {
            return v.clone();
        }
    }
    let v = new_request_id();
    headers.insert(&X_REQUEST_ID, v.clone());
    v
}

/// A random UUIDv4, formatted without allocating more than the header value itself.
pub fn new_request_id() -> HeaderValue {
    let out = request_id_bytes();
    // One allocation shared by every clone (the request header and the access-log record);
    // `from_bytes` would copy into a Vec and allocate again on the first clone.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(out))
        .unwrap_or_else(|_| HeaderValue::from_static("00000000-0000-4000-8000-000000000000"))
}

/// A random UUIDv4 as text, on the stack.
pub fn request_id_bytes() -> [u8; 36] {
    let n = fastrand::u128(..);
    let mut b = n.to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut j = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[j] = b'-';
            j += 1;
        }
        out[j] = HEX[(byte >> 4) as usize];
        out[j + 1] = HEX[(byte & 0xf) as usize];
        j += 2;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_connection_named_ones_too() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn messages_without_hop_by_hop_fields_are_left_alone() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("app"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2);
        let mut h = HeaderMap::new();
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty());
    }

    #[test]
    fn upgrades_keep_their_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&h, http::Version::HTTP_11));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
    }

    #[test]
    fn request_ids_are_uuids() {
        let v = new_request_id();
        let s = v.to_str().expect("ascii");
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert_ne!(new_request_id(), v);
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        set_forwarded(&mut h, "192.0.2.7:5555".parse().expect("addr"), "http");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
    }
}
