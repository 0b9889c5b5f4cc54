//! Userspace view of the XDP programs' per-CPU counters: `counter_struct!`, which the
//! counter structs of every program are made with, and the `wan_ingress` counters.

use gateway_common::WanCounter;

/// Defines a counter struct whose fields are named like the counters (`name()`), with
/// lookups by counter, per-CPU summing, reading from the program's per-CPU array, iteration in
/// index order and deltas.
macro_rules! counter_struct {
    (
        $(#[$meta:meta])*
        $name:ident for $enum:ident {
            $( $(#[$fmeta:meta])* $field:ident => $variant:ident, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: u64, )*
        }

        impl $name {
            /// The value of one counter.
            pub fn get(&self, counter: $enum) -> u64 {
                match counter {
                    $( $enum::$variant => self.$field, )*
                }
            }

            fn slot_mut(&mut self, counter: $enum) -> &mut u64 {
                match counter {
                    $( $enum::$variant => &mut self.$field, )*
                }
            }

            /// Adds per-CPU values of `counter` (wrapping, like the kernel-side counters).
            pub(crate) fn add(&mut self, counter: $enum, values: impl IntoIterator<Item = u64>) {
                let slot = self.slot_mut(counter);
                for v in values {
                    *slot = slot.wrapping_add(v);
                }
            }

            /// Every counter of the per-CPU array `map` (named `map_name` in errors), summed over
            /// CPUs.
            pub(crate) fn read(
                map: &aya::maps::PerCpuArray<aya::maps::MapData, u64>,
                map_name: &'static str,
            ) -> Result<$name, $crate::xdp::XdpError> {
                let mut out = $name::default();
                for c in $enum::ALL {
                    let values = map
                        .get(&c.index(), 0)
                        .map_err($crate::xdp::loader::map_err(map_name))?;
                    out.add(c, values.iter().copied());
                }
                Ok(out)
            }

            /// `(name, value)` for every counter, in map index order.
            pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
                $enum::ALL.iter().map(|&c| (c.name(), self.get(c)))
            }

            /// Counter-wise difference `self - earlier` (wrapping), e.g. for rates.
            pub fn delta(&self, earlier: &$name) -> $name {
                let mut out = $name::default();
                for c in $enum::ALL {
                    *out.slot_mut(c) = self.get(c).wrapping_sub(earlier.get(c));
                }
                out
            }
        }
    };
}
pub(crate) use counter_struct;

counter_struct! {
    /// Totals (summed over CPUs) of the `WAN_COUNTERS` map: packets seen by `wan_ingress` since it
    /// was attached, per verdict. Field names equal [`WanCounter::name`].
    WanCounters for WanCounter {
        /// Handshake initiations (type 1, 148 bytes) passed.
        pass_wg_init => PassWgInit,
        /// Handshake responses (type 2, 92 bytes) passed.
        pass_wg_response => PassWgResponse,
        /// Cookie replies (type 3, 64 bytes) passed.
        pass_wg_cookie => PassWgCookie,
        /// Transport data messages (type 4) passed.
        pass_wg_data => PassWgData,
        /// First fragments of valid-looking datagrams to the listen port, passed for reassembly.
        pass_fragment => PassFragment,
        /// Dropped: UDP payload shorter than 32 bytes.
        drop_too_short => DropTooShort,
        /// Dropped: message type not 1..=4.
        drop_bad_type => DropBadType,
        /// Dropped: reserved bytes not zero.
        drop_bad_reserved => DropBadReserved,
        /// Dropped: length does not match the message type.
        drop_bad_length => DropBadLength,
        /// Dropped: UDP length field inconsistent with the frame.
        drop_malformed => DropMalformed,
        /// Packets not addressed to the listen port, passed.
        other_passed => OtherPassed,
        /// Peer discovery messages passed.
        pass_disco => PassDisco,
        /// STUN binding answers passed.
        pass_stun => PassStun,
    }
}

impl WanCounters {
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
