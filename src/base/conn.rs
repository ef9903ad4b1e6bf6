//! What a request's server knows about its connection: the peer, and what TLS negotiated.

use http::HeaderValue;
use std::net::SocketAddr;
use std::sync::Arc;

/// What an HTTP/2 client sends first (RFC 9113 section 3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The preface's first line: the HTTP/1.1 server hands a connection that starts with it to the
/// HTTP/2 server (which checks the rest).
pub const H2_PREFACE_LINE: &[u8] = H2_PREFACE.split_at(16).0;

/// What a service knows about its connection.
#[derive(Debug, Clone)]
pub struct ConnMeta {
    pub peer: SocketAddr,
    /// What TLS negotiated, on a TLS listener.
    pub tls: Option<Arc<ConnTls>>,
    /// Where the connection was going before iptables redirected it (transparent mode); `None`
    /// when it came to the listener directly.
    pub original_dst: Option<SocketAddr>,
}

/// What one TLS connection negotiated, shared by its requests.
#[derive(Debug, Clone)]
pub struct ConnTls {
    pub version: &'static str,
    pub alpn: Option<&'static str>,
    /// The peer's identity: first URI SAN, else first DNS SAN, else the subject.
    pub peer_identity: Option<String>,
    /// `x-forwarded-client-cert` for the app, in Envoy's format.
    pub xfcc: Option<HeaderValue>,
}
