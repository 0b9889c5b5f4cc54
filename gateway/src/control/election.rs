//! HA primary election for one prefix, as a pure function.
//!
//! Several routers may advertise the same approved prefix; exactly one of them is *primary*
//! (the one peers route through), the others are standbys. Rules:
//!
//! * A router is **eligible** while its session is connected, its LAN health probe is ok and
//!   its key has not expired. Eligibility is tracked with the instant it last began.
//! * **Preference:** higher [`Candidate::priority`] wins (`--route-priority`, default 0; higher
//!   number = preferred). Ties go to the earliest advertisement, then the lowest node id, so
//!   the outcome is stable and does not depend on connection order.
//! * **Failover is immediate:** if the current primary is not eligible, the most preferred
//!   eligible router takes over at once.
//! * **No flapping:** an eligible primary keeps its role unless another eligible router has a
//!   *strictly higher* priority **and** has been eligible continuously for the hold-down
//!   period. Equal priority never preempts, and a router that comes back (or whose LAN recovers)
//!   waits out the hold-down before taking its role back.
//!
//! [`elect`] returns the decision and when to look again (the earliest moment a waiting
//! challenger's hold-down ends), so the server can arm a timer instead of polling.

use std::time::{Duration, Instant};

/// One router's candidacy for a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Node id (lower wins the last tie).
    pub node: u64,
    /// HA priority: higher is preferred.
    pub priority: u32,
    /// When the node (last) began advertising the prefix, Unix milliseconds (earlier wins ties).
    pub advertised_at: u64,
    /// `Some(t)`: eligible continuously since `t`; `None`: not eligible.
    pub eligible_since: Option<Instant>,
}

impl Candidate {
    /// Sort key: more preferred first.
    fn rank(&self) -> (std::cmp::Reverse<u32>, u64, u64) {
        (
            std::cmp::Reverse(self.priority),
            self.advertised_at,
            self.node,
        )
    }
}

/// The outcome of an election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The primary, if any candidate is eligible.
    pub primary: Option<u64>,
    /// Run the election again at this instant (a challenger's hold-down ends).
    pub recheck_at: Option<Instant>,
}

/// Elects the primary among `candidates` given the `current` one.
pub fn elect(
    current: Option<u64>,
    candidates: &[Candidate],
    now: Instant,
    hold_down: Duration,
) -> Decision {
    let best = |it: &mut dyn Iterator<Item = &Candidate>| it.min_by_key(|c| c.rank()).copied();
    let eligible = || candidates.iter().filter(|c| c.eligible_since.is_some());
    let ready = |c: &Candidate| {
        c.eligible_since
            .is_some_and(|since| now.saturating_duration_since(since) >= hold_down)
    };
    let incumbent = current.and_then(|id| eligible().find(|c| c.node == id).copied());
    let chosen = match incumbent {
        Some(cur) => {
            let challenger =
                best(&mut eligible().filter(|c| c.priority > cur.priority && ready(c)));
            challenger.unwrap_or(cur)
        }
        None => match best(&mut eligible()) {
            Some(c) => c,
            None => {
                return Decision {
                    primary: None,
                    recheck_at: None,
                }
            }
        },
    };
    let recheck_at = eligible()
        .filter(|c| c.priority > chosen.priority && !ready(c))
        .filter_map(|c| c.eligible_since.map(|s| s + hold_down))
        .min();
    Decision {
        primary: Some(chosen.node),
        recheck_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: Duration = Duration::from_secs(30);

    fn c(node: u64, priority: u32, since: Option<Instant>) -> Candidate {
        Candidate {
            node,
            priority,
            advertised_at: node * 10,
            eligible_since: since,
        }
    }

    #[test]
    fn highest_priority_then_earliest_then_lowest_id() {
        let t = Instant::now();
        let old = Some(t - HOLD * 2);
        let d = elect(None, &[c(1, 5, old), c(2, 9, old), c(3, 9, old)], t, HOLD);
        assert_eq!(d.primary, Some(2));
        let mut a = c(7, 1, old);
        let mut b = c(3, 1, old);
        a.advertised_at = 1;
        b.advertised_at = 2;
        assert_eq!(elect(None, &[b, a], t, HOLD).primary, Some(7));
        b.advertised_at = 1;
        assert_eq!(elect(None, &[a, b], t, HOLD).primary, Some(3));
        assert_eq!(elect(None, &[c(1, 5, None)], t, HOLD).primary, None);
    }

    #[test]
    fn failover_is_immediate() {
        let t = Instant::now();
        // Primary 2 goes ineligible; 1 has only just become eligible: it still takes over.
        let d = elect(Some(2), &[c(1, 1, Some(t)), c(2, 9, None)], t, HOLD);
        assert_eq!(d.primary, Some(1));
        assert_eq!(d.recheck_at, None);
    }

    #[test]
    fn no_preemption_at_equal_priority() {
        let t = Instant::now();
        let old = Some(t - HOLD * 10);
        let d = elect(Some(2), &[c(1, 5, old), c(2, 5, Some(t))], t, HOLD);
        assert_eq!(d.primary, Some(2));
        assert_eq!(d.recheck_at, None);
    }

    #[test]
    fn higher_priority_returns_after_hold_down_only() {
        let t0 = Instant::now();
        let back = t0 + Duration::from_secs(100);
        let cands = [c(1, 9, Some(back)), c(2, 1, Some(t0))];
        let d = elect(Some(2), &cands, back + Duration::from_secs(1), HOLD);
        assert_eq!(d.primary, Some(2), "within the hold-down the standby stays");
        assert_eq!(d.recheck_at, Some(back + HOLD));
        let d = elect(Some(2), &cands, back + HOLD, HOLD);
        assert_eq!(d.primary, Some(1));
        assert_eq!(d.recheck_at, None);
    }

    #[test]
    fn current_not_a_candidate_any_more() {
        let t = Instant::now();
        let d = elect(Some(42), &[c(1, 0, Some(t))], t, HOLD);
        assert_eq!(d.primary, Some(1));
    }
}
