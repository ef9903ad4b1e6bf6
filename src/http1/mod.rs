//! tandem's HTTP/1.x server for the inbound listener (the codec, [`server`]; the request head's
//! own rules in [`request`]): every HTTP/1.x request is read, checked and answered here, and
//! relayed to the app on the codec's own connections. The listener calls it; it calls
//! [`crate::proxy`] (the admission and the error answers), [`crate::upstream`] (the connections
//! to the app) and [`crate::base`] (the field and framing rules it shares with the client half,
//! [`crate::upstream::http1`]).

pub mod request;
pub mod server;
