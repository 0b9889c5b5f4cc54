//! Userspace view of the `wan_ingress` counters.

use gateway_common::WanCounter;
use serde::Serialize;

/// Totals (summed over CPUs) of the `WAN_COUNTERS` map: packets seen by `wan_ingress` since it
/// was attached, per verdict. Field names equal [`WanCounter::name`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WanCounters {
    /// Handshake initiations (type 1, 148 bytes) passed.
    pub pass_wg_init: u64,
    /// Handshake responses (type 2, 92 bytes) passed.
    pub pass_wg_response: u64,
    /// Cookie replies (type 3, 64 bytes) passed.
    pub pass_wg_cookie: u64,
    /// Transport data messages (type 4) passed.
    pub pass_wg_data: u64,
    /// First fragments of valid-looking datagrams to the listen port, passed for reassembly.
    pub pass_fragment: u64,
    /// Dropped: UDP payload shorter than 32 bytes.
    pub drop_too_short: u64,
    /// Dropped: message type not 1..=4.
    pub drop_bad_type: u64,
    /// Dropped: reserved bytes not zero.
    pub drop_bad_reserved: u64,
    /// Dropped: length does not match the message type.
    pub drop_bad_length: u64,
    /// Dropped: UDP length field inconsistent with the frame.
    pub drop_malformed: u64,
    /// Packets not addressed to the listen port, passed.
    pub other_passed: u64,
    /// Peer discovery messages passed.
    pub pass_disco: u64,
    /// STUN binding answers passed.
    pub pass_stun: u64,
}

impl WanCounters {
    /// The value of one counter.
    pub fn get(&self, counter: WanCounter) -> u64 {
        match counter {
            WanCounter::PassWgInit => self.pass_wg_init,
            WanCounter::PassWgResponse => self.pass_wg_response,
            WanCounter::PassWgCookie => self.pass_wg_cookie,
            WanCounter::PassWgData => self.pass_wg_data,
            WanCounter::PassFragment => self.pass_fragment,
            WanCounter::DropTooShort => self.drop_too_short,
            WanCounter::DropBadType => self.drop_bad_type,
            WanCounter::DropBadReserved => self.drop_bad_reserved,
            WanCounter::DropBadLength => self.drop_bad_length,
            WanCounter::DropMalformed => self.drop_malformed,
            WanCounter::OtherPassed => self.other_passed,
            WanCounter::PassDisco => self.pass_disco,
            WanCounter::PassStun => self.pass_stun,
        }
    }

    fn slot_mut(&mut self, counter: WanCounter) -> &mut u64 {
        match counter {
            WanCounter::PassWgInit => &mut self.pass_wg_init,
            WanCounter::PassWgResponse => &mut self.pass_wg_response,
            WanCounter::PassWgCookie => &mut self.pass_wg_cookie,
            WanCounter::PassWgData => &mut self.pass_wg_data,
            WanCounter::PassFragment => &mut self.pass_fragment,
            WanCounter::DropTooShort => &mut self.drop_too_short,
            WanCounter::DropBadType => &mut self.drop_bad_type,
            WanCounter::DropBadReserved => &mut self.drop_bad_reserved,
            WanCounter::DropBadLength => &mut self.drop_bad_length,
            WanCounter::DropMalformed => &mut self.drop_malformed,
            WanCounter::OtherPassed => &mut self.other_passed,
            WanCounter::PassDisco => &mut self.pass_disco,
            WanCounter::PassStun => &mut self.pass_stun,
        }
    }

    /// Adds per-CPU values of `counter` (wrapping, like the kernel-side counters).
    pub(crate) fn add(&mut self, counter: WanCounter, values: impl IntoIterator<Item = u64>) {
        let slot = self.slot_mut(counter);
        for v in values {
            *slot = slot.wrapping_add(v);
        }
    }

    /// `(name, value)` for every counter, in map index order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        WanCounter::ALL.iter().map(|&c| (c.name(), self.get(c)))
    }

    /// Packets dropped, all reasons.
    pub fn dropped(&self) -> u64 {
        self.sum(|c| !c.is_pass())
    }

    /// Packets to the listen port that were passed (WireGuard messages and first fragments).
    pub fn passed_listen_port(&self) -> u64 {
        self.sum(|c| c.is_pass() && c != WanCounter::OtherPassed)
    }

    fn sum(&self, pred: impl Fn(WanCounter) -> bool) -> u64 {
        WanCounter::ALL
            .iter()
            .filter(|&&c| pred(c))
            .fold(0u64, |acc, &c| acc.wrapping_add(self.get(c)))
    }

    /// Counter-wise difference `self - earlier` (wrapping), e.g. for rates.
    pub fn delta(&self, earlier: &WanCounters) -> WanCounters {
        let mut out = WanCounters::default();
        for c in WanCounter::ALL {
            *out.slot_mut(c) = self.get(c).wrapping_sub(earlier.get(c));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_its_own_field_named_like_the_enum() {
        let mut counters = WanCounters::default();
        for (i, c) in WanCounter::ALL.iter().enumerate() {
            counters.add(*c, [i as u64 + 1, 100]);
        }
        let json = serde_json::to_value(counters).unwrap();
        let obj = json.as_object().unwrap();
        assert_eq!(obj.len(), WanCounter::COUNT as usize);
        for (i, c) in WanCounter::ALL.iter().enumerate() {
            assert_eq!(counters.get(*c), i as u64 + 101, "{c:?}");
            assert_eq!(obj[c.name()], i as u64 + 101, "{}", c.name());
        }
        let names: Vec<_> = counters.iter().map(|(n, _)| n).collect();
        let expected: Vec<_> = WanCounter::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names, expected);
    }

    #[test]
    fn sums_and_delta() {
        let mut a = WanCounters::default();
        a.add(WanCounter::PassWgData, [5, 5]);
        a.add(WanCounter::PassFragment, [1]);
        a.add(WanCounter::DropBadType, [3]);
        a.add(WanCounter::DropMalformed, [1]);
        a.add(WanCounter::OtherPassed, [7]);
        assert_eq!(a.dropped(), 4);
        assert_eq!(a.passed_listen_port(), 11);
        let mut b = a;
        b.add(WanCounter::DropBadType, [2]);
        let d = b.delta(&a);
        assert_eq!(d.drop_bad_type, 2);
        assert_eq!(d.dropped(), 2);
        assert_eq!(d.pass_wg_data, 0);
    }
}
