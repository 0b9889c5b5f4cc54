//! WireGuard protocol as an I/O-free state machine (DESIGN.md §2, `wg/`).
//!
//! Wire-compatible with the Linux kernel module, wireguard-go and boringtun: the Noise
//! `IKpsk2` handshake over Curve25519, BLAKE2s and ChaCha20-Poly1305, MAC1/MAC2 with
//! XChaCha20-Poly1305 cookie replies, the transport data format with a sliding replay window,
//! and the timers of the WireGuard whitepaper (§6).
//!
//! Nothing here does I/O or reads a clock: every entry point takes `now: Instant` and writes
//! into a caller-provided buffer, so the whole protocol is unit-testable and fuzzable.
//!
//! * [`Responder`]: one per interface. Parses a datagram, checks MAC1 (and MAC2 under load,
//!   answering with a cookie reply), and tells the device which peer a packet is for.
//! * [`Tunnel`]: one per peer. Handshakes, transport encryption, timers.
//!
//! See [`tunnel`] for how the device layer drives a tunnel (queue flushing, timer ticks).

mod cookie;
pub(crate) mod crypto;
mod device_crypto;
mod error;
mod keys;
mod messages;
mod noise;
mod replay;
mod session;
pub mod timers;
pub mod tunnel;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod vectors;

pub use device_crypto::{Responder, Route};
pub use error::WgError;
pub use keys::{Key, KeyError};
pub use messages::{
    parse_packet, CookieReply, DataPacket, HandshakeInit, HandshakeResponse, MessageType, Packet,
    WireError, COOKIE_REPLY_LEN, DATA_HEADER_LEN, DATA_MIN_LEN, HANDSHAKE_INIT_LEN,
    HANDSHAKE_RESPONSE_LEN,
};
pub use session::data_message_len;
pub use tunnel::{TunnResult, Tunnel, TunnelStats, MAX_QUEUED_PACKETS};
