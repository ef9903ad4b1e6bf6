//! Listeners: binding, the accept loop with its connection limits and drain, TLS termination,
//! and the choice of protocol server for each connection ([`accept`], [`tls`]); in transparent
//! mode the original destination and the protocol of redirected connections ([`transparent`],
//! [`detect`]), the opaque ones handed to [`crate::tcp`]. The top of the
//! request path: it calls the protocol servers ([`crate::http1`], [`crate::h2`]) and, for the
//! listeners hyper serves, the services of [`crate::proxy`] and [`crate::admin`].

pub mod accept;
pub mod detect;
pub mod tls;
pub mod transparent;
