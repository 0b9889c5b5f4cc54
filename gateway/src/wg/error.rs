//! Why the protocol dropped a packet or refused an operation.

use super::messages::WireError;

/// A reason the state machine dropped a packet or gave up; [`WgError::label`] is stable and
/// meant for drop counters (`wg_drops_total{reason="..."}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WgError {
    /// The datagram is not a well-formed WireGuard message.
    #[error("malformed message: {0}")]
    Wire(#[from] WireError),
    /// MAC1 of a handshake message is wrong (not for us, or corrupted).
    #[error("invalid mac1")]
    InvalidMac1,
    /// Per-source handshake rate limit hit while under load (valid cookie, too many messages).
    #[error("handshake rate limited")]
    RateLimited,
    /// An AEAD tag did not verify (wrong key, corruption or forgery).
    #[error("decryption failed")]
    DecryptionFailed,
    /// A Diffie-Hellman result was all zero (low-order point).
    #[error("weak key: non-contributory Diffie-Hellman result")]
    WeakKey,
    /// A handshake initiation decrypted to a static key that is not this tunnel's peer.
    #[error("handshake from a different peer")]
    WrongPeer,
    /// A handshake initiation whose timestamp is not newer than the last one accepted.
    #[error("replayed handshake initiation (stale timestamp)")]
    ReplayedInitiation,
    /// Handshake initiations arrive faster than 50 per second from this peer.
    #[error("handshake initiation flood")]
    InitiationFlood,
    /// A handshake response or cookie reply that matches no handshake in flight.
    #[error("unexpected handshake packet")]
    UnexpectedPacket,
    /// A data packet for a receiver index with no (live) session.
    #[error("no session for receiver index")]
    NoSession,
    /// The session of a data packet is older than REJECT_AFTER_TIME or used up.
    #[error("session expired")]
    SessionExpired,
    /// A data packet counter that was already seen or is too far behind the window.
    #[error("replayed or too old counter")]
    Replayed,
    /// A decrypted data packet that is not a plausible IPv4/IPv6 packet.
    #[error("invalid inner packet")]
    InvalidInnerPacket,
    /// The caller's destination buffer cannot hold the result.
    #[error("destination buffer too small")]
    DestinationBufferTooSmall,
    /// No handshake completed within REKEY_ATTEMPT_TIME: queued packets were dropped.
    #[error("connection expired: handshake did not complete in time")]
    ConnectionExpired,
}

impl WgError {
    /// A short, stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            WgError::Wire(w) => w.label(),
            WgError::InvalidMac1 => "invalid_mac1",
            WgError::RateLimited => "rate_limited",
            WgError::DecryptionFailed => "decryption_failed",
            WgError::WeakKey => "weak_key",
            WgError::WrongPeer => "wrong_peer",
            WgError::ReplayedInitiation => "replayed_initiation",
            WgError::InitiationFlood => "initiation_flood",
            WgError::UnexpectedPacket => "unexpected_packet",
            WgError::NoSession => "no_session",
            WgError::SessionExpired => "session_expired",
            WgError::Replayed => "replayed_counter",
            WgError::InvalidInnerPacket => "invalid_inner_packet",
            WgError::DestinationBufferTooSmall => "buffer_too_small",
            WgError::ConnectionExpired => "connection_expired",
        }
    }
}
