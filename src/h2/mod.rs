//! tandem's HTTP/2 server (RFC 9113) for the inbound proxy ([`server`]), its HPACK codec
//! (RFC 7541, [`hpack`]) and its abuse counts as metrics ([`metrics`]). The listener calls it;
//! it calls [`crate::proxy`] and below.

pub mod hpack;
pub mod metrics;
pub mod server;
