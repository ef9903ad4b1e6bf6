//! The shared vocabulary at the bottom of the crate, which every folder may use and which uses
//! none of them: reason codes and directions ([`reason`]), what a server knows about its
//! connection ([`conn`]), and the request body types ([`body`]).

pub mod body;
pub mod conn;
pub mod reason;
