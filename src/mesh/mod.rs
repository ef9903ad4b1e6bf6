//! The mesh around the proxy: the interception rules that send a pod's TCP traffic through
//! tandem in transparent mode (`tandem iptables`: [`rules`] computes them, [`iptables`] applies
//! them); later the pod's identity. Uses only [`crate::config`] and [`crate::base`]; the commands
//! call it.

pub mod iptables;
pub mod rules;
