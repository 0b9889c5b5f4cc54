//! Peer relays: a node of the tailnet that relays UDP between two other nodes which cannot
//! reach each other directly (say both behind symmetric NATs), as a faster alternative to the
//! TCP relay servers. Enabled with `tailgate set --advertise-peer-relay`.
//!
//! The relay listens on one UDP port (41642 by default) for allocations and gives each pair
//! of nodes a session on a port of its own just above it. Each node binds the address its
//! packets come from with a challenge, so nobody else can take its place; after that the
//! session forwards every datagram from one bound address to the other, unchanged: WireGuard
//! packets stay end-to-end encrypted, and the nodes send plain WireGuard to the session's
//! address as if it were the peer's. The messages are discovery messages
//! ([`crate::traversal::disco`]), sealed with the node keys.
//!
//! - [`table`]: which sessions exist and who is bound where, and the bind cookies (pure).
//! - [`server`]: the UDP sockets.

pub mod server;
pub mod table;

/// The default UDP port for allocations; sessions use the ports just above it.
pub const DEFAULT_PORT: u16 = 41642;
/// Default number of sessions (and session ports) a relay offers.
pub const DEFAULT_SESSIONS: u16 = 256;

#[cfg(test)]
mod tests;
