//! The upstream side: pooled connections to the app and the clients that use them. Calls only
//! [`crate::base`], [`crate::config`] and [`crate::telemetry`]; the proxy and the protocol
//! servers call it.

pub mod pool;
