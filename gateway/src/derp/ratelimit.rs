//! A token bucket that paces how fast a relay client may send (bytes per second with a burst).
//! The server does not drop over-rate packets: it waits before reading the client's next
//! frame, so TCP's flow control slows the sender down.

use std::time::{Duration, Instant};

/// A token bucket of bytes.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilled at `bytes_per_sec`, holding at most `burst` bytes (at least one
    /// maximum-size packet, so any single packet can pass).
    pub fn new(bytes_per_sec: u64, burst: u64, now: Instant) -> TokenBucket {
        let burst = burst.max(super::frame::MAX_PACKET as u64) as f64;
        TokenBucket {
            rate: bytes_per_sec as f64,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `bytes` from the bucket at `now`; returns how long the caller must wait before
    /// reading more (zero when the bucket still had them).
    pub fn take(&mut self, bytes: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces_to_the_rate_after_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100_000, 0, t0);
        // The burst is one maximum packet (64 KiB): it passes without waiting.
        assert_eq!(b.take(65_536, t0), Duration::ZERO);
        // The next 50,000 bytes cost half a second at 100 kB/s.
        let wait = b.take(50_000, t0);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        // After waiting, the bucket is back at zero; a second later it is full again (the
        // burst, 64 KiB, caps the 100 kB a second brings).
        let t1 = t0 + wait + Duration::from_secs(1);
        assert_eq!(b.take(65_536, t1), Duration::ZERO);
        assert!(b.take(1, t1) > Duration::ZERO);
    }

    #[test]
    fn refills_no_higher_than_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000, 70_000, t0);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.take(70_000, later), Duration::ZERO);
        assert!(b.take(1_000, later) >= Duration::from_millis(999));
    }
}
