//! The relay (`tailgate derp serve`) and its client: when two nodes cannot reach each other
//! directly (symmetric NAT, UDP blocked), their WireGuard datagrams, already encrypted end to
//! end, travel over TLS to a relay server that hands them on by node key.
//!
//! - [`frame`]: the wire format (type, length, payload), pure.
//! - [`auth`]: the handshake's proof that a client holds its node key.
//! - [`http`]: the `GET /derp` upgrade in front of it, and the probe endpoints.
//! - [`tls`]: certificates (files or self-signed) and verification (web PKI or pinned).
//! - [`server`]: the relay server; [`mesh`]: links between the servers of a region.
//! - [`client`]: connecting, sending and receiving.
//! - [`ratelimit`]: the per-client token bucket.

pub mod auth;
pub mod cli;
pub mod client;
pub mod conn;
pub mod frame;
pub mod http;
pub mod map;
pub mod mesh;
pub mod metrics;
pub mod ratelimit;
pub mod server;
pub mod tls;

#[cfg(test)]
mod tests;
