//! STUN (RFC 5389) binding: how a node learns the address and port its NAT maps its
//! WireGuard socket to, and the server that tells it (beside the relay).
//!
//! - [`codec`]: binding requests and responses, pure.
//! - [`server`]: the UDP server `tailgate derp serve` runs (the XDP responder in
//!   [`crate::xdp::XdpStunResponder`] answers in front of it where it can attach).
//! - [`client`]: [`client::binding`], one request with retransmissions (netcheck, public
//!   endpoint discovery).

pub mod client;
pub mod codec;
pub mod server;

pub use client::{binding, ClientError};
pub use codec::DEFAULT_PORT;
pub use server::{StunCounters, StunServer, StunSnapshot};
