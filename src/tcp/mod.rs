//! Opaque TCP (transparent mode): a redirected connection that is not HTTP, or that goes to a port
//! in `transparent.opaque_ports`, is copied byte for byte to its destination ([`relay`]). The
//! listener decides what is opaque and where it goes; this folder only moves the bytes and
//! reports the connection (one access-log line with protocol `tcp`). It calls telemetry and the
//! shared vocabulary (`base`), nothing above.

pub mod relay;
