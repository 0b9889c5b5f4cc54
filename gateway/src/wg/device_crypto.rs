//! The interface-wide front door for incoming datagrams: MAC1/MAC2 checks, cookie replies
//! under load, per-source rate limiting, and finding which peer a packet is for.
//!
//! One [`Responder`] per interface, shared by all workers (`&self` methods, `Sync`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::cookie::{CookieChecker, MacCheck};
use super::error::WgError;
use super::keys::Key;
use super::messages::{parse_packet, HandshakeInit, Packet};
use super::noise::{decrypt_initiator_static, LocalStatic};
use super::tunnel::TunnResult;

/// Where the device should deliver a verified packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A handshake initiation from the peer with this static public key.
    PeerStatic(Key),
    /// A response, cookie reply or data packet for our session index; its upper 24 bits
    /// identify the peer (the `local_index_base` given to [`super::Tunnel::new`]).
    ReceiverIndex(u32),
}

/// Checks and routes incoming datagrams for one interface (our static key).
pub struct Responder {
    local: LocalStatic,
    checker: CookieChecker,
    limiter: RateLimiter,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("public", &self.local.public.short())
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// A responder for the interface with this static private key.
    pub fn new(static_private: Key) -> Responder {
        let local = LocalStatic::new(&static_private);
        Responder {
            checker: CookieChecker::new(&local.public),
            local,
            limiter: RateLimiter::default(),
        }
    }

    /// Our static public key.
    pub fn public_key(&self) -> &Key {
        &self.local.public
    }

    /// [`Responder::verify_and_identify_at`] at `Instant::now()`.
    pub fn verify_and_identify<'a, 'd>(
        &self,
        src: SocketAddr,
        datagram: &'a [u8],
        under_load: bool,
        dst: &'d mut [u8],
    ) -> Result<Packet<'a>, TunnResult<'d>> {
        self.verify_and_identify_at(src, datagram, under_load, dst, Instant::now())
    }

    /// Parses a datagram and, for handshake messages, checks MAC1 and — when `under_load` —
    /// MAC2. A handshake message without a valid cookie under load gets a cookie reply:
    /// `Err(TunnResult::WriteToNetwork(reply))`, to be sent back to `src`. With a valid
    /// cookie, sources are rate limited (20 handshakes/s, burst 5, per IPv4 address or IPv6
    /// /64). Other failures are `Err(TunnResult::Err(reason))`. No state of any tunnel changes.
    ///
    /// On `Ok`, find the tunnel with [`Responder::route`] (for initiations this decrypts the
    /// initiator's static key) and hand it the packet with `Tunnel::decapsulate_packet`.
    pub fn verify_and_identify_at<'a, 'd>(
        &self,
        src: SocketAddr,
        datagram: &'a [u8],
        under_load: bool,
        dst: &'d mut [u8],
        now: Instant,
    ) -> Result<Packet<'a>, TunnResult<'d>> {
        let packet = parse_packet(datagram).map_err(|e| TunnResult::Err(e.into()))?;
        let (raw, sender_index): (&[u8], u32) = match &packet {
            Packet::HandshakeInit(m) => (m.raw, m.sender_index),
            Packet::HandshakeResponse(m) => (m.raw, m.sender_index),
            Packet::CookieReply(_) | Packet::Data(_) => return Ok(packet),
        };
        match self.checker.check(raw, src, under_load, now) {
            MacCheck::Invalid => Err(TunnResult::Err(WgError::InvalidMac1)),
            MacCheck::ValidNoCookie if under_load => {
                match self.checker.write_reply(dst, sender_index, raw, src, now) {
                    Ok(n) => Err(TunnResult::WriteToNetwork(&mut dst[..n])),
                    Err(e) => Err(TunnResult::Err(e)),
                }
            }
            MacCheck::ValidNoCookie => Ok(packet),
            MacCheck::ValidWithCookie => {
                if self.limiter.allow(src.ip(), now) {
                    Ok(packet)
                } else {
                    Err(TunnResult::Err(WgError::RateLimited))
                }
            }
        }
    }

    /// Decrypts the static public key of the initiator of `init` (addressed to us), without
    /// changing any state. `None` if it does not decrypt.
    pub fn identify_initiator(&self, init: &HandshakeInit<'_>) -> Option<Key> {
        decrypt_initiator_static(&self.local, init)
            .ok()
            .map(|h| h.peer_static)
    }

    /// Which peer a verified packet is for: initiations by the initiator's static key (see
    /// [`Responder::identify_initiator`]), everything else by receiver index.
    pub fn route(&self, packet: &Packet<'_>) -> Option<Route> {
        match packet {
            Packet::HandshakeInit(init) => self.identify_initiator(init).map(Route::PeerStatic),
            other => other.receiver_index().map(Route::ReceiverIndex),
        }
    }

    /// Checks MAC1 of a handshake message (no cookie logic); data and cookie replies pass.
    pub fn check_mac1(&self, datagram: &[u8]) -> bool {
        match parse_packet(datagram) {
            Ok(Packet::HandshakeInit(m)) => {
                super::cookie::verify_mac1(self.checker.mac1_key(), m.raw)
            }
            Ok(Packet::HandshakeResponse(m)) => {
                super::cookie::verify_mac1(self.checker.mac1_key(), m.raw)
            }
            Ok(_) => true,
            Err(_) => false,
        }
    }
}

/// Handshake messages per second allowed per source under load.
const PACKETS_PER_SECOND: u64 = 20;
/// Burst allowed per source.
const PACKETS_BURSTABLE: u64 = 5;
const PACKET_COST_NS: u64 = 1_000_000_000 / PACKETS_PER_SECOND;
const TOKEN_MAX_NS: u64 = PACKET_COST_NS * PACKETS_BURSTABLE;
/// Sources tracked at most; beyond this new sources are refused until entries age out.
const MAX_SOURCES: usize = 65_536;
/// Idle entries are forgotten after this.
const ENTRY_IDLE: Duration = Duration::from_secs(1);

/// Token bucket per source address (IPv4 /32, IPv6 /64), like the kernel's ratelimiter.
#[derive(Default)]
struct RateLimiter {
    table: Mutex<LimiterTable>,
}

#[derive(Default)]
struct LimiterTable {
    buckets: HashMap<[u8; 8], (u64, Instant)>,
    last_gc: Option<Instant>,
}

fn source_key(ip: IpAddr) -> [u8; 8] {
    let mut k = [0u8; 8];
    match ip.to_canonical() {
        IpAddr::V4(a) => {
            k[0] = 4;
            k[4..].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => k.copy_from_slice(&a.octets()[..8]),
    }
    k
}

impl RateLimiter {
    fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if t.last_gc
            .is_none_or(|g| now.saturating_duration_since(g) >= ENTRY_IDLE)
        {
            t.buckets
                .retain(|_, (_, last)| now.saturating_duration_since(*last) < ENTRY_IDLE);
            t.last_gc = Some(now);
        }
        let key = source_key(ip);
        if let Some((tokens, last)) = t.buckets.get_mut(&key) {
            let elapsed = now.saturating_duration_since(*last).as_nanos();
            *tokens = (u128::from(*tokens) + elapsed).min(u128::from(TOKEN_MAX_NS)) as u64;
            *last = now;
            if *tokens >= PACKET_COST_NS {
                *tokens -= PACKET_COST_NS;
                return true;
            }
            return false;
        }
        if t.buckets.len() >= MAX_SOURCES {
            return false;
        }
        t.buckets.insert(key, (TOKEN_MAX_NS - PACKET_COST_NS, now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_burst_then_rate() {
        let r = RateLimiter::default();
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..PACKETS_BURSTABLE {
            assert!(r.allow(ip, t0));
        }
        assert!(!r.allow(ip, t0));
        // Another source is independent; an IPv6 /64 is one source.
        assert!(r.allow("192.0.2.2".parse().unwrap(), t0));
        assert!(r.allow("2001:db8::1".parse().unwrap(), t0));
        for _ in 1..PACKETS_BURSTABLE {
            assert!(r.allow("2001:db8::2".parse().unwrap(), t0));
        }
        assert!(!r.allow("2001:db8::3".parse().unwrap(), t0));
        assert!(r.allow("2001:db8:0:1::3".parse().unwrap(), t0));
        // 50 ms later one more packet is allowed.
        let t1 = t0 + Duration::from_millis(50);
        assert!(r.allow(ip, t1));
        assert!(!r.allow(ip, t1));
    }
}
