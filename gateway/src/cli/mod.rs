//! Command-line front ends that talk to the local daemon (the binary's `main.rs` parses
//! arguments and delegates here).

pub mod dns;
pub mod netcheck;
pub mod ping;
pub mod routing;
