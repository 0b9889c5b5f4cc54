//! A longest-prefix-match table over IPv4 and IPv6 networks.
//!
//! One hash map per prefix length; a lookup probes the lengths in use from longest to shortest,
//! so it costs at most 33 (IPv4) or 129 (IPv6) hash probes and usually far fewer.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// Maps IP networks to values; [`PrefixTable::lookup`] returns the longest match.
#[derive(Debug, Clone)]
pub struct PrefixTable<T> {
    v4: Family<T>,
    v6: Family<T>,
}

#[derive(Debug, Clone)]
struct Family<T> {
    /// `by_len[n]` holds the networks of prefix length `n`, keyed by masked address bits.
    by_len: Vec<HashMap<u128, T>>,
    /// Prefix lengths with at least one entry, longest first.
    lengths_in_use: Vec<u8>,
}

impl<T> Family<T> {
    fn new(bits: usize) -> Self {
        Family {
            by_len: (0..=bits).map(|_| HashMap::new()).collect(),
            lengths_in_use: Vec::new(),
        }
    }

    fn refresh_lengths(&mut self) {
        self.lengths_in_use = (0..self.by_len.len())
            .rev()
            .filter(|&n| !self.by_len[n].is_empty())
            .map(|n| n as u8)
            .collect();
    }
}

fn key(addr: IpAddr, len: u8) -> u128 {
    let (bits, width) = match addr {
        IpAddr::V4(a) => (u32::from(a) as u128, 32u32),
        IpAddr::V6(a) => (u128::from(a), 128u32),
    };
    let host_bits = width - u32::from(len);
    if host_bits >= 128 {
        0
    } else {
        bits >> host_bits
    }
}

impl<T> Default for PrefixTable<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> PrefixTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        PrefixTable {
            v4: Family::new(32),
            v6: Family::new(128),
        }
    }

    fn family(&mut self, addr: IpAddr) -> &mut Family<T> {
        match addr {
            IpAddr::V4(_) => &mut self.v4,
            IpAddr::V6(_) => &mut self.v6,
        }
    }

    /// Inserts or replaces the value for `net` (host bits are ignored); returns the old value.
    pub fn insert(&mut self, net: IpNet, value: T) -> Option<T> {
        let len = net.prefix_len();
        let fam = self.family(net.addr());
        let old = fam.by_len[len as usize].insert(key(net.addr(), len), value);
        if old.is_none() {
            fam.refresh_lengths();
        }
        old
    }

    /// Removes `net`; returns its value.
    pub fn remove(&mut self, net: &IpNet) -> Option<T> {
        let len = net.prefix_len();
        let fam = self.family(net.addr());
        let old = fam.by_len[len as usize].remove(&key(net.addr(), len));
        if old.is_some() {
            fam.refresh_lengths();
        }
        old
    }

    /// Removes every entry for which `keep` returns false.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for fam in [&mut self.v4, &mut self.v6] {
            for map in &mut fam.by_len {
                map.retain(|_, v| keep(v));
            }
            fam.refresh_lengths();
        }
    }

    /// The value of the longest prefix containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<&T> {
        let fam = match addr {
            IpAddr::V4(_) => &self.v4,
            IpAddr::V6(_) => &self.v6,
        };
        fam.lengths_in_use
            .iter()
            .find_map(|&len| fam.by_len[len as usize].get(&key(addr, len)))
    }

    /// Number of prefixes stored.
    pub fn len(&self) -> usize {
        [&self.v4, &self.v6]
            .iter()
            .flat_map(|f| f.by_len.iter())
            .map(HashMap::len)
            .sum()
    }

    /// True when no prefix is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = PrefixTable::new();
        t.insert(net("10.0.0.0/16"), "A");
        t.insert(net("10.0.1.0/24"), "B");
        t.insert(net("0.0.0.0/0"), "exit");
        t.insert(net("fd7a:115c:a1e0::/48"), "v6");
        assert_eq!(t.lookup("10.0.1.5".parse().unwrap()), Some(&"B"));
        assert_eq!(t.lookup("10.0.2.5".parse().unwrap()), Some(&"A"));
        assert_eq!(t.lookup("8.8.8.8".parse().unwrap()), Some(&"exit"));
        assert_eq!(t.lookup("fd7a:115c:a1e0::9".parse().unwrap()), Some(&"v6"));
        assert_eq!(t.lookup("fd00::1".parse().unwrap()), None);
        assert_eq!(t.remove(&net("10.0.1.0/24")), Some("B"));
        assert_eq!(t.lookup("10.0.1.5".parse().unwrap()), Some(&"A"));
        t.retain(|v| *v != "A");
        assert_eq!(t.lookup("10.0.1.5".parse().unwrap()), Some(&"exit"));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn host_bits_are_ignored() {
        let mut t = PrefixTable::new();
        t.insert(net("192.168.50.7/24"), 1);
        assert_eq!(t.lookup("192.168.50.200".parse().unwrap()), Some(&1));
        assert_eq!(t.remove(&net("192.168.50.0/24")), Some(1));
    }

    proptest! {
        /// The table agrees with a brute-force scan over all stored networks.
        #[test]
        fn matches_brute_force(
            nets in proptest::collection::vec((any::<u32>(), 0u8..=32), 0..40),
            probes in proptest::collection::vec(any::<u32>(), 1..40),
        ) {
            let mut t = PrefixTable::new();
            let mut all = Vec::new();
            for (i, (addr, len)) in nets.iter().enumerate() {
                let n = IpNet::new(std::net::Ipv4Addr::from(*addr).into(), *len).unwrap().trunc();
                t.insert(n, i);
                all.retain(|(m, _): &(IpNet, usize)| *m != n);
                all.push((n, i));
            }
            for p in probes {
                let ip = IpAddr::from(std::net::Ipv4Addr::from(p));
                let want = all.iter().filter(|(n, _)| n.contains(&ip)).max_by_key(|(n, _)| n.prefix_len()).map(|(_, v)| v);
                prop_assert_eq!(t.lookup(ip), want);
            }
        }
    }
}
