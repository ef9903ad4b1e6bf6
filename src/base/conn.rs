//! What a request's server knows about its connection: the peer, and what TLS negotiated.

use http::HeaderValue;
use std::net::SocketAddr;
use std::sync::Arc;

/// What a service knows about its connection.
#[derive(Debug, Clone)]
pub struct ConnMeta {
    pub peer: SocketAddr,
    /// What TLS negotiated, on a TLS listener.
    pub tls: Option<Arc<ConnTls>>,
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
