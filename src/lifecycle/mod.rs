//! A process's life in a pod: the stop signal, the drain and its connection tracker
//! ([`shutdown`]), the app's readiness check ([`readiness`]), worker threads from the
//! container's CPU limit ([`workers`]), `tandem await` ([`await_cmd`]) and memory given back
//! after a burst of connections ([`memory`]). Calls only
//! [`crate::base`] and [`crate::config`].

#[cfg(unix)]
pub mod await_cmd;
pub mod memory;
pub mod readiness;
pub mod shutdown;
pub mod signals;
pub mod workers;
