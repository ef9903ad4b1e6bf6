//! The upstream side: pooled connections to the app and the clients that use them
//! ([`pool`]), and tandem's HTTP/1.1 client half to the app ([`http1`]). Calls only
//! [`crate::base`], [`crate::config`] and [`crate::telemetry`]; the proxy and the protocol
//! servers call it.

pub mod http1;
pub mod pool;
