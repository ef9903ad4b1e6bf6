//! tandem's HTTP/1.1: the inbound server (the codec, [`server`]), its client half to the app
//! ([`client`]), and the request-framing guard for the listeners hyper still serves
//! ([`guard`]). The listener calls it; it calls [`crate::proxy`], [`crate::upstream`],
//! [`crate::telemetry`] and [`crate::base`].

pub mod client;
pub mod guard;
pub mod server;
