//! Userspace view of the `tun_forward` / `lan_return` counters.

use gateway_common::{LanCounter, TunCounter};
use serde::Serialize;

use super::counters::counter_struct;

counter_struct! {
    /// Totals (summed over CPUs) of `TUN_FWD_COUNTERS`: what `tun_forward` did with the packets
    /// the daemon wrote into the TUN. Field names equal [`TunCounter::name`].
    TunForwardCounters for TunCounter {
        /// Plain IPv4 forwarded to the LAN by XDP (redirect).
        forwarded_v4 => FwdV4,
        /// 4via6 translated and forwarded to the LAN by XDP (redirect).
        forwarded_via6 => FwdVia6,
        /// Connection entries created.
        snat_new_conn => SnatNewConn,
        /// No neighbour entry yet: NATed as needed and passed for the kernel to route.
        passed_no_neigh => PassNoNeigh,
        /// GSO super-packets (partial checksum): NATed and passed for the kernel to segment.
        passed_gso => PassGso,
        /// Too big without DF: NATed/translated and passed for the kernel to fragment.
        passed_fragment => PassFragment,
        /// IPv4 with DF too big for the LAN: passed untouched (the kernel sends ICMP).
        passed_too_big => PassTooBig,
        /// 4via6 too big for the LAN: ICMPv6 packet-too-big sent back into the tunnel.
        icmp_too_big => IcmpTooBig,
        /// Not tailnet → advertised route: passed untouched.
        passed_no_match => PassNoMatch,
        /// Fragments, extension headers, other protocols, ICMP errors, 4via6 GSO: passed.
        passed_unsupported => PassUnsupported,
        /// TTL / hop limit expiring: passed untouched.
        passed_ttl => PassTtl,
        /// No usable route or egress not a LAN interface: passed untouched.
        passed_fib => PassFib,
        /// No free SNAT port: passed untouched.
        passed_no_port => PassNoPort,
        /// Helper failure after modification: dropped.
        dropped_error => DropError,
    }
}

impl TunForwardCounters {
    /// Packets forwarded entirely by XDP (redirected to a LAN interface).
    pub fn forwarded(&self) -> u64 {
        self.forwarded_v4.wrapping_add(self.forwarded_via6)
    }
}

counter_struct! {
    /// Totals (summed over CPUs) of `LAN_RET_COUNTERS`: what `lan_return` did with the packets
    /// arriving on the LAN interfaces. Field names equal [`LanCounter::name`].
    LanReturnCounters for LanCounter {
        /// Replies de-SNATed and passed (the kernel routes them into the TUN).
        returned_v4 => ReturnedV4,
        /// 4via6 replies translated back to IPv6 and passed.
        returned_via6 => ReturnedVia6,
        /// Not a reply of a tracked connection: passed untouched.
        passed_no_match => PassNoMatch,
        /// The matching entry had idled out or lost its other half: passed untouched.
        passed_expired => PassExpired,
        /// Fragments, VLAN tags, options (4via6), ICMP errors: passed untouched.
        passed_unsupported => PassUnsupported,
        /// Replies too big for the tunnel: ICMP fragmentation-needed sent to the LAN host.
        icmp_too_big => IcmpTooBig,
        /// 4via6 replies too big for the tunnel without DF: dropped.
        dropped_too_big => DropTooBig,
        /// Helper failure after modification: dropped.
        dropped_error => DropError,
        /// ICMP errors about tracked connections, translated for the client and passed.
        returned_icmp_error => ReturnedIcmpError,
        /// Returned packets (also counted above) handed to an AF_XDP socket instead of the
        /// kernel.
        redirected_xsk => RedirectedXsk,
    }
}

impl LanReturnCounters {
    /// Replies handed back toward the tunnel.
    pub fn returned(&self) -> u64 {
        self.returned_v4.wrapping_add(self.returned_via6)
    }
}

/// Both programs' counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ForwardCounters {
    /// `tun_forward` on the TUN device.
    pub tun: TunForwardCounters,
    /// `lan_return` on the LAN interfaces.
    pub lan: LanReturnCounters,
}

impl ForwardCounters {
    /// Counter-wise difference `self - earlier`.
    pub fn delta(&self, earlier: &ForwardCounters) -> ForwardCounters {
        ForwardCounters {
            tun: self.tun.delta(&earlier.tun),
            lan: self.lan.delta(&earlier.lan),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_named_like_the_counters() {
        let mut t = TunForwardCounters::default();
        for (i, c) in TunCounter::ALL.iter().enumerate() {
            t.add(*c, [i as u64 + 1, 10]);
        }
        let json = serde_json::to_value(t).unwrap();
        let obj = json.as_object().unwrap();
        assert_eq!(obj.len(), TunCounter::COUNT as usize);
        for (i, c) in TunCounter::ALL.iter().enumerate() {
            assert_eq!(obj[c.name()], i as u64 + 11, "{}", c.name());
        }
        let mut l = LanReturnCounters::default();
        for (i, c) in LanCounter::ALL.iter().enumerate() {
            l.add(*c, [i as u64 + 1]);
        }
        let json = serde_json::to_value(l).unwrap();
        let obj = json.as_object().unwrap();
        assert_eq!(obj.len(), LanCounter::COUNT as usize);
        for (i, c) in LanCounter::ALL.iter().enumerate() {
            assert_eq!(obj[c.name()], i as u64 + 1, "{}", c.name());
        }
        let names: Vec<_> = l.iter().map(|(n, _)| n).collect();
        assert_eq!(names[0], "returned_v4");
    }

    #[test]
    fn sums_and_deltas() {
        let mut a = ForwardCounters::default();
        a.tun.add(TunCounter::FwdV4, [3]);
        a.tun.add(TunCounter::FwdVia6, [4]);
        a.lan.add(LanCounter::ReturnedVia6, [5]);
        assert_eq!(a.tun.forwarded(), 7);
        assert_eq!(a.lan.returned(), 5);
        let mut b = a;
        b.tun.add(TunCounter::FwdV4, [1]);
        let d = b.delta(&a);
        assert_eq!(d.tun.forwarded_v4, 1);
        assert_eq!(d.lan.returned_via6, 0);
    }
}
