//! Protocol timers (whitepaper §6), polled: [`Tunnel::update_timers`] compares deadlines with
//! the `now` it is given instead of arming OS timers. Events and rules follow the kernel's
//! `timers.c` / `send.c` / `receive.c`:
//!
//! * retransmit an unanswered initiation after REKEY_TIMEOUT (+0–333 ms jitter); give up
//!   REKEY_ATTEMPT_TIME after the attempt series began (queued packets are dropped);
//! * at most one initiation per REKEY_TIMEOUT;
//! * as initiator, rekey when sending on a session older than REKEY_AFTER_TIME (or after
//!   REKEY_AFTER_MESSAGES), and when receiving on one older than
//!   REJECT_AFTER_TIME − KEEPALIVE_TIMEOUT − REKEY_TIMEOUT;
//! * sessions are unusable after REJECT_AFTER_TIME / REJECT_AFTER_MESSAGES;
//! * a keepalive after KEEPALIVE_TIMEOUT of receiving data without sending any;
//! * a new handshake if we sent data and heard nothing for KEEPALIVE_TIMEOUT + REKEY_TIMEOUT;
//! * a persistent keepalive after the configured interval without any authenticated packet;
//! * all key material is erased 3 × REJECT_AFTER_TIME after the last session was derived.

use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};

use super::tunnel::{TunnResult, Tunnel};
use super::WgError;

pub use super::replay::REJECT_AFTER_MESSAGES;

/// Rekey after this many messages on a session: 2^60.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// The initiator rekeys sessions older than this.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// Sessions older than this are not used.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Give up on a handshake after trying this long.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// Retransmit an unanswered initiation after this (plus jitter); also the minimum interval
/// between initiations.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound of the random jitter added to REKEY_TIMEOUT.
pub const REKEY_TIMEOUT_JITTER_MAX: Duration = Duration::from_millis(333);
/// Send a keepalive after receiving data for this long without sending any.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Erase all keys this long after the last session was derived.
pub const ZERO_KEYS_AFTER: Duration = Duration::from_secs(3 * 180);
/// Accepted initiations from one peer are at least this far apart (50 per second).
pub const MIN_INITIATION_INTERVAL: Duration = Duration::from_millis(20);

/// Deadlines and flags of one tunnel.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    /// When we last sent an initiation (rate limit).
    pub(crate) last_sent_handshake: Option<Instant>,
    /// Retransmit the initiation in flight at this time.
    pub(crate) retransmit_at: Option<Instant>,
    /// Start of the current series of handshake attempts (for REKEY_ATTEMPT_TIME).
    pub(crate) attempt_started: Option<Instant>,
    /// An initiation should be sent as soon as the rate limit allows.
    pub(crate) handshake_wanted: bool,
    /// Send a keepalive at this time (we received data and sent nothing).
    pub(crate) keepalive_at: Option<Instant>,
    /// More data arrived while the keepalive timer was pending.
    pub(crate) need_another_keepalive: bool,
    /// Start a new handshake at this time (we sent data and heard nothing).
    pub(crate) new_handshake_at: Option<Instant>,
    /// Erase all keys at this time.
    pub(crate) zero_at: Option<Instant>,
    /// Persistent keepalive interval.
    pub(crate) persistent_interval: Option<Duration>,
    /// Send a persistent keepalive at this time.
    pub(crate) persistent_at: Option<Instant>,
    /// The receive-side "last minute" rekey was already requested for this session.
    pub(crate) sent_lastminute_handshake: bool,
    /// When the last handshake completed.
    pub(crate) last_handshake: Option<Instant>,
    rng: JitterRng,
}

/// Not cryptographic: jitter only needs to desynchronise peers, and this runs on the data
/// path (no syscall per packet). Seeded from the OS once per tunnel.
#[derive(Debug)]
pub(crate) struct JitterRng(u64);

impl Default for JitterRng {
    fn default() -> Self {
        JitterRng(OsRng.next_u64() | 1)
    }
}

impl JitterRng {
    /// Uniform-ish in `0..REKEY_TIMEOUT_JITTER_MAX` (xorshift64*).
    fn jitter(&mut self) -> Duration {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32;
        Duration::from_micros(r % REKEY_TIMEOUT_JITTER_MAX.as_micros() as u64)
    }
}

fn due(t: Option<Instant>, now: Instant) -> bool {
    t.is_some_and(|t| now >= t)
}

impl Timers {
    pub(crate) fn set_persistent_keepalive(&mut self, interval: Option<u16>, now: Instant) {
        let new = interval
            .filter(|&s| s > 0)
            .map(|s| Duration::from_secs(u64::from(s)));
        if new.is_some() && self.persistent_interval.is_none() {
            self.persistent_at = Some(now);
        }
        if new.is_none() {
            self.persistent_at = None;
        }
        self.persistent_interval = new;
    }

    pub(crate) fn data_sent(&mut self, now: Instant) {
        if self.new_handshake_at.is_none() {
            let j = self.rng.jitter();
            self.new_handshake_at = Some(now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + j);
        }
    }

    pub(crate) fn data_received(&mut self, now: Instant) {
        if self.keepalive_at.is_none() {
            self.keepalive_at = Some(now + KEEPALIVE_TIMEOUT);
        } else {
            self.need_another_keepalive = true;
        }
    }

    pub(crate) fn any_authenticated_packet_sent(&mut self) {
        self.keepalive_at = None;
    }

    pub(crate) fn any_authenticated_packet_received(&mut self) {
        self.new_handshake_at = None;
    }

    pub(crate) fn any_authenticated_packet_traversal(&mut self, now: Instant) {
        if let Some(i) = self.persistent_interval {
            self.persistent_at = Some(now + i);
        }
    }

    pub(crate) fn handshake_initiated(&mut self, now: Instant) {
        self.last_sent_handshake = Some(now);
        self.retransmit_at = Some(now + REKEY_TIMEOUT + self.rng.jitter());
        self.handshake_wanted = false;
        if self.attempt_started.is_none() {
            self.attempt_started = Some(now);
        }
    }

    pub(crate) fn handshake_complete(&mut self, now: Instant) {
        self.retransmit_at = None;
        self.attempt_started = None;
        self.handshake_wanted = false;
        self.sent_lastminute_handshake = false;
        self.last_handshake = Some(now);
    }

    pub(crate) fn session_derived(&mut self, now: Instant) {
        self.zero_at = Some(now + ZERO_KEYS_AFTER);
    }
}

impl Tunnel {
    /// Runs the protocol timers; call every 100–250 ms. Returns a handshake initiation or
    /// keepalive to send to the peer, `Err(ConnectionExpired)` once when a handshake gives up,
    /// or `Done`. `dst` needs at least 148 bytes.
    pub fn update_timers<'a>(&mut self, dst: &'a mut [u8], now: Instant) -> TunnResult<'a> {
        if due(self.timers.zero_at, now) {
            log::debug!("peer {}: erasing keys", self.peer.public.short());
            self.timers.zero_at = None;
            self.timers.retransmit_at = None;
            self.timers.handshake_wanted = false;
            self.timers.attempt_started = None;
            self.clear_all();
        }
        self.expire_sessions(now);

        if due(self.timers.retransmit_at, now) {
            self.timers.retransmit_at = None;
            let started = self.timers.attempt_started.unwrap_or(now);
            if now.saturating_duration_since(started) >= REKEY_ATTEMPT_TIME {
                log::debug!(
                    "peer {}: handshake did not complete after {} s, giving up",
                    self.peer.public.short(),
                    REKEY_ATTEMPT_TIME.as_secs()
                );
                self.pending = None;
                self.timers.handshake_wanted = false;
                self.timers.attempt_started = None;
                self.drop_queue();
                if self.timers.zero_at.is_none() {
                    self.timers.zero_at = Some(now + ZERO_KEYS_AFTER);
                }
                return TunnResult::Err(WgError::ConnectionExpired);
            }
            log::trace!("peer {}: retrying handshake", self.peer.public.short());
            return self.send_initiation(dst, now);
        }

        if self.timers.handshake_wanted && self.can_initiate(now) {
            return self.send_initiation(dst, now);
        }

        if due(self.timers.new_handshake_at, now) {
            self.timers.new_handshake_at = None;
            log::trace!(
                "peer {}: no reply to data, new handshake",
                self.peer.public.short()
            );
            self.want_handshake(now);
            if self.can_initiate(now) {
                return self.send_initiation(dst, now);
            }
        }

        if due(self.timers.keepalive_at, now) {
            self.timers.keepalive_at = None;
            let again = std::mem::take(&mut self.timers.need_another_keepalive);
            let r = self.send_keepalive(dst, now);
            if again {
                self.timers.keepalive_at = Some(now + KEEPALIVE_TIMEOUT);
            }
            return r;
        }

        if let Some(interval) = self.timers.persistent_interval {
            if due(self.timers.persistent_at, now) {
                self.timers.persistent_at = Some(now + interval);
                return self.send_keepalive(dst, now);
            }
        }
        TunnResult::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_below_max_and_varies() {
        let mut r = JitterRng::default();
        let v: Vec<Duration> = (0..1000).map(|_| r.jitter()).collect();
        assert!(v.iter().all(|&j| j < REKEY_TIMEOUT_JITTER_MAX));
        assert!(v.iter().any(|&j| j < Duration::from_millis(50)));
        assert!(v.iter().any(|&j| j > Duration::from_millis(280)));
    }

    #[test]
    fn constants_are_the_papers() {
        assert_eq!(REKEY_AFTER_MESSAGES, 1 << 60);
        assert_eq!(REJECT_AFTER_MESSAGES, u64::MAX - (1 << 13));
        assert_eq!(
            (REKEY_AFTER_TIME, REJECT_AFTER_TIME, REKEY_ATTEMPT_TIME),
            (
                Duration::from_secs(120),
                Duration::from_secs(180),
                Duration::from_secs(90)
            )
        );
        assert_eq!(
            (REKEY_TIMEOUT, KEEPALIVE_TIMEOUT),
            (Duration::from_secs(5), Duration::from_secs(10))
        );
        assert_eq!(ZERO_KEYS_AFTER, REJECT_AFTER_TIME * 3);
    }
}
