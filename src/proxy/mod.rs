//! The proxy: what happens to a request between the server that read it and the upstream that
//! answers it. [`inbound`] (client → app) and [`outbound`] (the app's own calls), the header
//! rewriting every forwarded message goes through ([`headers`]), admission (the in-flight cap and
//! the head limits, [`admission`]), the one error enum and its one
//! response function ([`error`]), and the response body ([`body`]). The protocol servers call
//! it; it calls [`crate::upstream`], [`crate::telemetry`] and [`crate::base`].

pub mod admission;
pub mod body;
pub mod error;
pub mod headers;
pub mod inbound;
pub mod outbound;
