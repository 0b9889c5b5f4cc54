//! The receive-side replay window (RFC 6479 bitmap ring, as in the kernel and wireguard-go).
//!
//! 8192 bits in 128 words; one word is always being recycled, so the effective window is
//! 8128 counters behind the highest one seen. Checking is split from updating so a packet is
//! only recorded after its tag verified.

/// Messages after which a session must not be used any more: 2^64 - 2^13 - 1.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

const WORD_BITS: u64 = 64;
const WORDS: usize = 128;
const RING_BITS: u64 = WORDS as u64 * WORD_BITS;
/// How far behind the highest counter a packet may be and still be accepted.
pub const WINDOW_SIZE: u64 = RING_BITS - WORD_BITS;

/// Sliding window of received counters.
#[derive(Clone)]
pub struct ReplayWindow {
    /// Highest counter accepted so far plus one (0 = nothing received yet).
    next: u64,
    ring: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            next: 0,
            ring: [0; WORDS],
        }
    }
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("next", &self.next)
            .finish()
    }
}

impl ReplayWindow {
    /// Whether `counter` would be accepted (not too old, not seen, below the limit).
    /// Does not change the window.
    #[inline]
    pub fn check(&self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        if counter >= self.next {
            return true;
        }
        if self.next - counter > WINDOW_SIZE {
            return false;
        }
        let (word, bit) = Self::pos(counter);
        self.ring[word] & bit == 0
    }

    /// Records `counter` as received; false if it is a replay or out of the window (then
    /// nothing changes). Call only after the packet authenticated.
    #[inline]
    pub fn check_and_update(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        if counter >= self.next {
            // Moving the top forward: clear the words between the old top word (exclusive)
            // and the new one (inclusive), at most the whole ring. A fresh ring is all zero.
            let new_word = counter / WORD_BITS;
            if self.next > 0 {
                let old_word = (self.next - 1) / WORD_BITS;
                let n = (new_word - old_word).min(WORDS as u64);
                for i in 0..n {
                    self.ring[((new_word - i) % WORDS as u64) as usize] = 0;
                }
            }
            self.next = counter + 1;
        }
        let (word, bit) = Self::pos(counter);
        self.ring[word] |= bit;
        true
    }

    #[inline(always)]
    fn pos(counter: u64) -> (usize, u64) {
        (
            ((counter / WORD_BITS) % WORDS as u64) as usize,
            1u64 << (counter % WORD_BITS),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_duplicates_and_reorder() {
        let mut w = ReplayWindow::default();
        assert!(w.check_and_update(0));
        assert!(!w.check_and_update(0));
        assert!(w.check_and_update(2));
        assert!(w.check_and_update(1));
        assert!(!w.check_and_update(1));
        assert!(!w.check_and_update(2));
        assert!(w.check_and_update(3));
    }

    #[test]
    fn window_edges() {
        let mut w = ReplayWindow::default();
        let top = 100_000;
        assert!(w.check_and_update(top));
        // Exactly WINDOW_SIZE behind is accepted, one more is not.
        assert!(w.check(top + 1 - WINDOW_SIZE));
        assert!(!w.check(top - WINDOW_SIZE));
        assert!(w.check_and_update(top + 1 - WINDOW_SIZE));
        assert!(!w.check_and_update(top + 1 - WINDOW_SIZE));
        assert!(!w.check_and_update(top - WINDOW_SIZE - 5));
        // A big jump forward forgets everything older.
        assert!(w.check_and_update(top + 10 * RING_BITS));
        assert!(!w.check(top));
        assert!(w.check(top + 10 * RING_BITS - 1));
    }

    #[test]
    fn window_is_at_least_2048() {
        const { assert!(WINDOW_SIZE >= 2048) };
        let mut w = ReplayWindow::default();
        assert!(w.check_and_update(5000));
        for c in (5000 - 2048..5000).rev() {
            assert!(w.check_and_update(c), "{c}");
        }
    }

    #[test]
    fn reject_after_messages() {
        let mut w = ReplayWindow::default();
        assert_eq!(REJECT_AFTER_MESSAGES, 18_446_744_073_709_543_423);
        assert!(!w.check_and_update(REJECT_AFTER_MESSAGES));
        assert!(!w.check_and_update(u64::MAX));
        assert!(w.check_and_update(REJECT_AFTER_MESSAGES - 1));
    }

    proptest! {
        /// The bitmap agrees with a naive model (set of seen counters + highest).
        #[test]
        fn matches_naive_model(ops in proptest::collection::vec(0u64..20_000, 1..600)) {
            let mut w = ReplayWindow::default();
            let mut seen = std::collections::HashSet::new();
            let mut top: Option<u64> = None;
            for c in ops {
                let expect = match top {
                    None => true,
                    Some(t) if c > t => true,
                    Some(t) => t - c < WINDOW_SIZE && !seen.contains(&c),
                };
                prop_assert_eq!(w.check_and_update(c), expect, "counter {}", c);
                if expect {
                    seen.insert(c);
                    top = Some(top.map_or(c, |t| t.max(c)));
                }
            }
        }
    }
}
