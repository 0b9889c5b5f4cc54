//! Reaching peers behind NAT: a relay fallback that works from the first packet, and direct
//! paths found and kept with a small discovery protocol.
//!
//! - [`disco`]: the sealed ping/pong/call-me-maybe messages, pure.
//! - [`paths`]: which path each peer's packets take, pure.
//! - [`relay`]: the node's connections to relay regions.
//! - [`manager`]: runs the discovery for a device and applies the chosen paths.

pub mod disco;
pub mod manager;
pub mod paths;
pub mod relay;
