//! tandem's HTTP/2 server (RFC 9113) for the inbound proxy ([`server`]) and its HPACK codec
//! (RFC 7541, [`hpack`]). The listener calls it; it calls [`crate::proxy`] and below.

pub mod hpack;
pub mod server;
