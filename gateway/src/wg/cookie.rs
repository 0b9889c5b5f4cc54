//! MAC1/MAC2 and cookie replies (whitepaper §5.4.7, §6.6).
//!
//! * [`CookieState`] is the sending side, one per peer: it stamps MAC1 and, while it holds a
//!   fresh cookie, MAC2 on our handshake messages, and accepts cookie replies.
//! * [`CookieChecker`] is the receiving side, one per interface: it checks MAC1/MAC2 of
//!   incoming handshake messages and writes cookie replies, with a secret that rotates every
//!   two minutes.

use std::net::{IpAddr, SocketAddr};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use zeroize::Zeroize;

use super::crypto::{hash, mac, xaead_open, xaead_seal, LABEL_COOKIE, LABEL_MAC1};
use super::error::WgError;
use super::keys::{ct_eq, Key};
use super::messages::{CookieReply, MessageType, COOKIE_REPLY_LEN};

/// Lifetime of the cookie secret, and of a received cookie.
pub const COOKIE_SECRET_MAX_AGE: Duration = Duration::from_secs(120);
/// A received cookie is used for this much less than [`COOKIE_SECRET_MAX_AGE`].
pub const COOKIE_SECRET_LATENCY: Duration = Duration::from_secs(5);

/// `HASH(LABEL_MAC1 || public)`: the MAC1 key for messages sent to `public`.
pub(crate) fn mac1_key(public: &Key) -> [u8; 32] {
    hash(&[LABEL_MAC1, public.as_bytes()])
}

/// `HASH(LABEL_COOKIE || public)`: the key of cookie replies sent by `public`.
pub(crate) fn cookie_key(public: &Key) -> [u8; 32] {
    hash(&[LABEL_COOKIE, public.as_bytes()])
}

/// The MAC1 of a handshake message (over everything before the two MACs).
fn compute_mac1(key: &[u8; 32], msg: &[u8]) -> Option<[u8; 16]> {
    Some(mac(key, msg.get(..msg.len().checked_sub(32)?)?))
}

/// The MAC2 of a handshake message (over everything before MAC2).
fn compute_mac2(cookie: &[u8; 16], msg: &[u8]) -> Option<[u8; 16]> {
    Some(mac(cookie, msg.get(..msg.len().checked_sub(16)?)?))
}

/// Checks MAC1 of a complete handshake message addressed to the owner of `mac1_key`.
pub(crate) fn verify_mac1(mac1_key: &[u8; 32], msg: &[u8]) -> bool {
    let (Some(expect), Some(got)) = (compute_mac1(mac1_key, msg), mac_field(msg, 32)) else {
        return false;
    };
    ct_eq(&expect, got)
}

fn mac_field(msg: &[u8], from_end: usize) -> Option<&[u8; 16]> {
    let at = msg.len().checked_sub(from_end)?;
    msg.get(at..at + 16)?.try_into().ok()
}

/// The sending side of MAC1/MAC2 for one peer.
#[derive(Default)]
pub(crate) struct CookieState {
    /// The last cookie received and when.
    cookie: Option<([u8; 16], Instant)>,
    /// MAC1 of the last handshake message we sent, until a cookie reply used it.
    last_mac1: Option<[u8; 16]>,
}

impl Drop for CookieState {
    fn drop(&mut self) {
        if let Some((c, _)) = &mut self.cookie {
            c.zeroize();
        }
    }
}

impl CookieState {
    /// Fills MAC1 and MAC2 (the last 32 bytes) of a handshake message we are about to send.
    pub(crate) fn stamp(&mut self, peer_mac1_key: &[u8; 32], msg: &mut [u8], now: Instant) {
        let len = msg.len();
        if len < 32 {
            return;
        }
        let Some(m1) = compute_mac1(peer_mac1_key, msg) else {
            return;
        };
        msg[len - 32..len - 16].copy_from_slice(&m1);
        self.last_mac1 = Some(m1);
        let fresh = self.cookie.as_ref().filter(|(_, at)| {
            now.saturating_duration_since(*at) < COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY
        });
        let m2 = match fresh {
            Some((c, _)) => compute_mac2(c, msg).unwrap_or([0; 16]),
            None => [0; 16],
        };
        msg[len - 16..].copy_from_slice(&m2);
    }

    /// Accepts a cookie reply from the peer (decrypted with `peer_cookie_key`).
    pub(crate) fn consume_reply(
        &mut self,
        peer_cookie_key: &[u8; 32],
        reply: &CookieReply<'_>,
        now: Instant,
    ) -> Result<(), WgError> {
        let aad = self.last_mac1.ok_or(WgError::UnexpectedPacket)?;
        let mut cookie = [0u8; 16];
        let mut tag = [0u8; 16];
        cookie.copy_from_slice(&reply.encrypted_cookie[..16]);
        tag.copy_from_slice(&reply.encrypted_cookie[16..]);
        if !xaead_open(peer_cookie_key, reply.nonce, &mut cookie, &tag, &aad) {
            return Err(WgError::DecryptionFailed);
        }
        if let Some((old, _)) = &mut self.cookie {
            old.zeroize();
        }
        self.cookie = Some((cookie, now));
        // One reply per MAC1: a replayed cookie reply is useless.
        self.last_mac1 = None;
        Ok(())
    }

    /// Whether we hold a cookie younger than 115 s.
    #[cfg(test)]
    pub(crate) fn has_fresh_cookie(&self, now: Instant) -> bool {
        self.cookie.as_ref().is_some_and(|(_, at)| {
            now.saturating_duration_since(*at) < COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY
        })
    }
}

/// The rotating secret `R_m` of the receiving side.
struct Secret {
    bytes: [u8; 32],
    born: Option<Instant>,
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

/// Result of checking the MACs of an incoming handshake message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MacCheck {
    /// MAC1 is wrong: drop silently.
    Invalid,
    /// MAC1 is right; MAC2 missing or wrong (or not checked).
    ValidNoCookie,
    /// Both MACs are right.
    ValidWithCookie,
}

/// The receiving side of MAC1/MAC2, one per interface (shared by all workers).
pub(crate) struct CookieChecker {
    mac1_key: [u8; 32],
    cookie_key: [u8; 32],
    secret: RwLock<Secret>,
}

impl CookieChecker {
    /// A checker for messages addressed to `our_public`.
    pub(crate) fn new(our_public: &Key) -> Self {
        CookieChecker {
            mac1_key: mac1_key(our_public),
            cookie_key: cookie_key(our_public),
            secret: RwLock::new(Secret {
                bytes: [0; 32],
                born: None,
            }),
        }
    }

    /// MAC1 key of our own public key.
    pub(crate) fn mac1_key(&self) -> &[u8; 32] {
        &self.mac1_key
    }

    /// Checks MAC1, and MAC2 when `check_cookie` (the device is under load).
    pub(crate) fn check(
        &self,
        msg: &[u8],
        src: SocketAddr,
        check_cookie: bool,
        now: Instant,
    ) -> MacCheck {
        if !verify_mac1(&self.mac1_key, msg) {
            return MacCheck::Invalid;
        }
        if !check_cookie {
            return MacCheck::ValidNoCookie;
        }
        let Some(cookie) = self.current_cookie(src, now) else {
            return MacCheck::ValidNoCookie;
        };
        match (compute_mac2(&cookie, msg), mac_field(msg, 16)) {
            (Some(expect), Some(got)) if ct_eq(&expect, got) => MacCheck::ValidWithCookie,
            _ => MacCheck::ValidNoCookie,
        }
    }

    /// `τ = MAC(R_m, A_m)` with the current secret, if it is not older than two minutes.
    fn current_cookie(&self, src: SocketAddr, now: Instant) -> Option<[u8; 16]> {
        let s = self.secret.read().unwrap_or_else(|p| p.into_inner());
        let born = s.born?;
        if now.saturating_duration_since(born) >= COOKIE_SECRET_MAX_AGE {
            return None;
        }
        Some(make_cookie(&s.bytes, src))
    }

    /// Writes a cookie reply to the handshake message `msg` (whose MAC1 was valid) from
    /// `src` into `dst`, rotating the secret first if it expired. Returns its length.
    pub(crate) fn write_reply(
        &self,
        dst: &mut [u8],
        sender_index: u32,
        msg: &[u8],
        src: SocketAddr,
        now: Instant,
    ) -> Result<usize, WgError> {
        let out = dst
            .get_mut(..COOKIE_REPLY_LEN)
            .ok_or(WgError::DestinationBufferTooSmall)?;
        let mac1 = *mac_field(msg, 32).ok_or(WgError::InvalidMac1)?;
        let mut cookie = {
            let mut s = self.secret.write().unwrap_or_else(|p| p.into_inner());
            let expired = s
                .born
                .is_none_or(|b| now.saturating_duration_since(b) >= COOKIE_SECRET_MAX_AGE);
            if expired {
                OsRng.fill_bytes(&mut s.bytes);
                s.born = Some(now);
            }
            make_cookie(&s.bytes, src)
        };
        let mut nonce = [0u8; 24];
        OsRng.fill_bytes(&mut nonce);
        write_cookie_reply(
            out,
            &self.cookie_key,
            sender_index,
            &nonce,
            &mut cookie,
            &mac1,
        );
        Ok(COOKIE_REPLY_LEN)
    }
}

/// `MAC(secret, A_m)` where `A_m` is the source IP (4 or 16 bytes) and big-endian port.
pub(crate) fn make_cookie(secret: &[u8; 32], src: SocketAddr) -> [u8; 16] {
    let mut a = [0u8; 18];
    let n = match src.ip().to_canonical() {
        IpAddr::V4(ip) => {
            a[..4].copy_from_slice(&ip.octets());
            4
        }
        IpAddr::V6(ip) => {
            a[..16].copy_from_slice(&ip.octets());
            16
        }
    };
    a[n..n + 2].copy_from_slice(&src.port().to_be_bytes());
    mac(secret, &a[..n + 2])
}

/// Builds a cookie reply in `out` (64 bytes), encrypting (and then wiping) `cookie`.
pub(crate) fn write_cookie_reply(
    out: &mut [u8],
    cookie_key: &[u8; 32],
    receiver_index: u32,
    nonce: &[u8; 24],
    cookie: &mut [u8; 16],
    mac1: &[u8; 16],
) {
    let tag = xaead_seal(cookie_key, nonce, cookie, mac1);
    out[0..4].copy_from_slice(&MessageType::CookieReply.header());
    out[4..8].copy_from_slice(&receiver_index.to_le_bytes());
    out[8..32].copy_from_slice(nonce);
    out[32..48].copy_from_slice(cookie);
    out[48..64].copy_from_slice(&tag);
    cookie.zeroize();
}
