//! The shared vocabulary at the bottom of the crate, which every folder may use and which uses
//! none of them: reason codes and directions ([`reason`]), what gRPC needs
//! from a proxy (the status table, [`grpc`]), what a server knows about its
//! connection ([`conn`]), the request body types ([`body`]), and the HTTP rules every layer
//! applies the same way: field rules ([`fields`]) and HTTP/1.1 framing ([`framing`]); the one
//! byte-counting stream wrapper ([`io`]); what this binary is ([`build`]).

pub mod body;
pub mod build;
pub mod conn;
pub mod fields;
pub mod framing;
pub mod grpc;
pub mod io;
pub mod reason;
