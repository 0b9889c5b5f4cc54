//! Decides when the device is "under load" and must answer handshakes with cookie replies.
//!
//! Like wireguard-go, load is judged from the rate of incoming handshake messages: more than
//! [`HANDSHAKES_PER_SECOND_UNDER_LOAD`] in one second puts the device under load for the next
//! second, during which every handshake must carry a valid MAC2 (a cookie).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Handshake messages per second above which the device demands cookies.
pub const HANDSHAKES_PER_SECOND_UNDER_LOAD: u64 = 64;

/// A lock-free one-second window counter of handshake messages.
#[derive(Debug)]
pub struct LoadMeter {
    origin: Instant,
    /// Second (since `origin`) the current window belongs to.
    window: AtomicU64,
    count: AtomicU64,
    /// Last second (since `origin`) in which the threshold was exceeded, plus one.
    loaded_until: AtomicU64,
}

impl LoadMeter {
    /// A meter with no history.
    pub fn new(origin: Instant) -> Self {
        LoadMeter {
            origin,
            window: AtomicU64::new(0),
            count: AtomicU64::new(0),
            loaded_until: AtomicU64::new(0),
        }
    }

    /// Records one handshake message at `now` and says whether the device is under load.
    pub fn record_handshake(&self, now: Instant) -> bool {
        let sec = now.saturating_duration_since(self.origin).as_secs();
        if self.window.swap(sec, Ordering::Relaxed) != sec {
            self.count.store(0, Ordering::Relaxed);
        }
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if n > HANDSHAKES_PER_SECOND_UNDER_LOAD {
            self.loaded_until.fetch_max(sec + 1, Ordering::Relaxed);
        }
        sec <= self.loaded_until.load(Ordering::Relaxed)
            && self.loaded_until.load(Ordering::Relaxed) > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn flood_sets_load_for_a_second_then_clears() {
        let t0 = Instant::now();
        let m = LoadMeter::new(t0);
        for _ in 0..HANDSHAKES_PER_SECOND_UNDER_LOAD {
            assert!(!m.record_handshake(t0));
        }
        assert!(m.record_handshake(t0));
        assert!(m.record_handshake(t0 + Duration::from_millis(1500)));
        assert!(!m.record_handshake(t0 + Duration::from_secs(3)));
    }
}
