//! Which rule, if any, accepts a packet: a bitmap classifier whose cost does not grow with the
//! number of rules.
//!
//! Every (rule, destination, port range) is an *atom* with one bit. Three lookups give three
//! bitmaps — the atoms whose sources contain the packet's source (longest-prefix match over
//! all source prefixes), whose destination contains its destination (the same over
//! destination prefixes), and whose protocol and port range fit (binary search over the
//! elementary port intervals of that protocol) — and the packet is accepted by the first
//! atom set in all three. A lookup is a few hash probes and an AND of `atoms / 64` words.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use super::packet::PacketInfo;
use crate::control::acl::{has_ports, DEFAULT_PROTOS};
use crate::control::proto::FilterRule;

/// A set of atoms.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bitmap(Vec<u64>);

impl Bitmap {
    fn new(bits: usize) -> Bitmap {
        Bitmap(vec![0; bits.div_ceil(64)])
    }

    fn set(&mut self, bit: usize) {
        self.0[bit / 64] |= 1 << (bit % 64);
    }

    fn or(&mut self, other: &Bitmap) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }
}

/// First bit set in all three bitmaps.
fn first_common(a: &Bitmap, b: &Bitmap, c: &Bitmap) -> Option<usize> {
    a.0.iter()
        .zip(&b.0)
        .zip(&c.0)
        .enumerate()
        .find_map(|(i, ((x, y), z))| {
            let w = x & y & z;
            (w != 0).then(|| i * 64 + w.trailing_zeros() as usize)
        })
}

/// Longest-prefix match from an address to a bitmap, one hash map per prefix length present.
#[derive(Debug, Default)]
struct PrefixBitmaps {
    /// (length, masked address → bitmap index), longest first; IPv4 and IPv6 apart.
    v4: Vec<(u8, HashMap<u128, usize>)>,
    v6: Vec<(u8, HashMap<u128, usize>)>,
    bitmaps: Vec<Bitmap>,
}

fn key(addr: IpAddr, len: u8) -> u128 {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            u128::from(if len == 0 {
                0
            } else {
                bits & (u32::MAX << (32 - len))
            })
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            if len == 0 {
                0
            } else {
                bits & (u128::MAX << (128 - len))
            }
        }
    }
}

impl PrefixBitmaps {
    /// `direct[p]`: the atoms naming prefix `p`. Each prefix's bitmap also gets the atoms of
    /// every prefix containing it, so the longest match alone answers.
    fn build(direct: &HashMap<IpNet, Bitmap>, bits: usize) -> PrefixBitmaps {
        let mut out = PrefixBitmaps::default();
        for (net, _) in direct.iter() {
            let mut bm = Bitmap::new(bits);
            for (outer, atoms) in direct.iter() {
                if outer.contains(net) {
                    bm.or(atoms);
                }
            }
            let index = out.bitmaps.len();
            out.bitmaps.push(bm);
            let len = net.prefix_len();
            let table = match net {
                IpNet::V4(_) => &mut out.v4,
                IpNet::V6(_) => &mut out.v6,
            };
            let slot = match table.iter().position(|(l, _)| *l == len) {
                Some(i) => i,
                None => {
                    table.push((len, HashMap::new()));
                    table.len() - 1
                }
            };
            table[slot].1.insert(key(net.addr(), len), index);
        }
        out.v4.sort_by_key(|e| std::cmp::Reverse(e.0));
        out.v6.sort_by_key(|e| std::cmp::Reverse(e.0));
        out
    }

    fn lookup(&self, addr: IpAddr) -> Option<&Bitmap> {
        let table = match addr {
            IpAddr::V4(_) => &self.v4,
            IpAddr::V6(_) => &self.v6,
        };
        table
            .iter()
            .find_map(|(len, map)| map.get(&key(addr, *len)))
            .map(|&i| &self.bitmaps[i])
    }
}

/// The atoms a protocol allows, by destination port for TCP, UDP and SCTP.
#[derive(Debug)]
enum ProtoAtoms {
    /// Elementary intervals: (first port, atoms), sorted; an interval runs to the next start.
    Ports(Vec<(u16, Bitmap)>),
    /// Ports do not apply.
    Any(Bitmap),
}

/// The compiled rules.
#[derive(Debug)]
pub struct Classifier {
    /// The `acl` index of each atom.
    atom_acl: Vec<u32>,
    src: PrefixBitmaps,
    dst: PrefixBitmaps,
    protos: HashMap<u8, ProtoAtoms>,
}

impl Classifier {
    /// Compiles `rules`.
    pub fn new(rules: &[FilterRule]) -> Classifier {
        // Atoms: one per (rule, destination entry).
        let mut atoms = Vec::new();
        for r in rules {
            let protos = if r.protos.is_empty() {
                DEFAULT_PROTOS.to_vec()
            } else {
                r.protos.clone()
            };
            for d in &r.dst {
                atoms.push((r, *d, protos.clone()));
            }
        }
        let bits = atoms.len().max(1);
        let mut src_direct: HashMap<IpNet, Bitmap> = HashMap::new();
        let mut dst_direct: HashMap<IpNet, Bitmap> = HashMap::new();
        for (i, (rule, d, _)) in atoms.iter().enumerate() {
            for s in &rule.src {
                src_direct
                    .entry(s.trunc())
                    .or_insert_with(|| Bitmap::new(bits))
                    .set(i);
            }
            dst_direct
                .entry(d.net.trunc())
                .or_insert_with(|| Bitmap::new(bits))
                .set(i);
        }
        let all_protos: BTreeSet<u8> = atoms.iter().flat_map(|(_, _, p)| p.clone()).collect();
        let mut protos = HashMap::new();
        for proto in all_protos {
            let with: Vec<usize> = (0..atoms.len())
                .filter(|&i| atoms[i].2.contains(&proto))
                .collect();
            let entry = if has_ports(proto) {
                let mut starts: BTreeSet<u32> = BTreeSet::from([0]);
                for &i in &with {
                    starts.insert(u32::from(atoms[i].1.first));
                    starts.insert(u32::from(atoms[i].1.last) + 1);
                }
                let intervals = starts
                    .into_iter()
                    .filter(|&s| s <= u32::from(u16::MAX))
                    .map(|s| {
                        let mut bm = Bitmap::new(bits);
                        for &i in &with {
                            let d = atoms[i].1;
                            if u32::from(d.first) <= s && s <= u32::from(d.last) {
                                bm.set(i);
                            }
                        }
                        (s as u16, bm)
                    })
                    .collect();
                ProtoAtoms::Ports(intervals)
            } else {
                let mut bm = Bitmap::new(bits);
                for &i in &with {
                    bm.set(i);
                }
                ProtoAtoms::Any(bm)
            };
            protos.insert(proto, entry);
        }
        Classifier {
            atom_acl: atoms.iter().map(|(r, _, _)| r.acl).collect(),
            src: PrefixBitmaps::build(&src_direct, bits),
            dst: PrefixBitmaps::build(&dst_direct, bits),
            protos,
        }
    }

    /// The `acl` index of the first rule that accepts `p`, ignoring ports for protocols
    /// without them (an ICMP echo matches by addresses and protocol).
    pub fn accepts(&self, p: &PacketInfo) -> Option<u32> {
        let src = self.src.lookup(p.src)?;
        let dst = self.dst.lookup(p.dst)?;
        let proto = match self.protos.get(&p.proto)? {
            ProtoAtoms::Any(bm) => bm,
            ProtoAtoms::Ports(intervals) => {
                let i = intervals.partition_point(|(start, _)| *start <= p.dport);
                &intervals[i.checked_sub(1)?].1
            }
        };
        first_common(src, dst, proto).map(|atom| self.atom_acl[atom])
    }

    /// Number of atoms (rule × destination entries).
    pub fn atoms(&self) -> usize {
        self.atom_acl.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::proto::DstPorts;
    use proptest::prelude::*;

    fn rule(acl: u32, src: &[&str], dst: &[(&str, u16, u16)], protos: &[u8]) -> FilterRule {
        FilterRule {
            acl,
            src: src.iter().map(|s| s.parse().unwrap()).collect(),
            dst: dst
                .iter()
                .map(|(n, a, b)| DstPorts {
                    net: n.parse().unwrap(),
                    first: *a,
                    last: *b,
                })
                .collect(),
            protos: protos.to_vec(),
        }
    }

    fn pkt(proto: u8, src: &str, dst: &str, dport: u16) -> PacketInfo {
        PacketInfo {
            proto,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport: 40000,
            dport,
            icmp: None,
            later_fragment: false,
        }
    }

    /// The obvious, slow definition the classifier must agree with.
    fn naive(rules: &[FilterRule], p: &PacketInfo) -> Option<u32> {
        rules.iter().find_map(|r| {
            let protos = if r.protos.is_empty() {
                DEFAULT_PROTOS.to_vec()
            } else {
                r.protos.clone()
            };
            let ok = protos.contains(&p.proto)
                && r.src.iter().any(|s| s.contains(&p.src))
                && r.dst.iter().any(|d| {
                    d.net.contains(&p.dst)
                        && (!has_ports(p.proto) || (d.first <= p.dport && p.dport <= d.last))
                });
            ok.then_some(r.acl)
        })
    }

    #[test]
    fn matches_sources_destinations_ports_and_protocols() {
        let rules = vec![
            rule(
                0,
                &["100.64.0.1/32"],
                &[("100.64.0.2/32", 22, 22), ("100.64.0.2/32", 443, 443)],
                &[],
            ),
            rule(
                1,
                &["100.64.0.0/10"],
                &[("192.168.1.0/24", 0, 65535)],
                &[17],
            ),
            rule(
                2,
                &["0.0.0.0/0", "::/0"],
                &[("fd7a:115c:a1e0::2/128", 8000, 8999)],
                &[6],
            ),
        ];
        let c = Classifier::new(&rules);
        assert_eq!(c.atoms(), 4);
        assert_eq!(c.accepts(&pkt(6, "100.64.0.1", "100.64.0.2", 22)), Some(0));
        assert_eq!(c.accepts(&pkt(6, "100.64.0.1", "100.64.0.2", 23)), None);
        assert_eq!(
            c.accepts(&pkt(17, "100.64.0.1", "100.64.0.2", 443)),
            Some(0)
        );
        assert_eq!(
            c.accepts(&pkt(1, "100.64.0.1", "100.64.0.2", 0)),
            Some(0),
            "ICMP ignores ports"
        );
        assert_eq!(c.accepts(&pkt(6, "100.64.0.9", "100.64.0.2", 22)), None);
        assert_eq!(
            c.accepts(&pkt(17, "100.64.0.9", "192.168.1.7", 53)),
            Some(1)
        );
        assert_eq!(
            c.accepts(&pkt(6, "100.64.0.9", "192.168.1.7", 53)),
            None,
            "UDP only"
        );
        assert_eq!(
            c.accepts(&pkt(6, "fd7a:115c:a1e0::9", "fd7a:115c:a1e0::2", 8080)),
            Some(2)
        );
        assert_eq!(
            c.accepts(&pkt(6, "fd7a:115c:a1e0::9", "fd7a:115c:a1e0::2", 9000)),
            None
        );
        assert_eq!(
            c.accepts(&pkt(47, "100.64.0.1", "100.64.0.2", 0)),
            None,
            "GRE not listed"
        );
        let empty = Classifier::new(&[]);
        assert_eq!(empty.accepts(&pkt(6, "100.64.0.1", "100.64.0.2", 22)), None);
    }

    fn arb_rule() -> impl Strategy<Value = FilterRule> {
        let net = (0u8..4, 0u8..=32).prop_map(|(a, len)| {
            IpNet::new(IpAddr::from([10, a, a, 1]), len)
                .unwrap()
                .trunc()
        });
        let dst = (net.clone(), 0u16..100, 0u16..100).prop_map(|(net, a, b)| DstPorts {
            net,
            first: a.min(b),
            last: a.max(b),
        });
        (
            0u32..20,
            proptest::collection::vec(net, 1..3),
            proptest::collection::vec(dst, 1..3),
            proptest::sample::select(vec![vec![], vec![6], vec![17], vec![1]]),
        )
            .prop_map(|(acl, src, dst, protos)| FilterRule {
                acl,
                src,
                dst,
                protos,
            })
    }

    proptest! {
        #[test]
        fn agrees_with_the_naive_matcher(
            rules in proptest::collection::vec(arb_rule(), 0..12),
            probes in proptest::collection::vec((0u8..4, 0u8..4, 0u16..110, proptest::sample::select(vec![1u8, 6, 17, 47])), 1..40),
        ) {
            let c = Classifier::new(&rules);
            for (s, d, port, proto) in probes {
                let p = PacketInfo {
                    proto,
                    src: IpAddr::from([10, s, s, 1]),
                    dst: IpAddr::from([10, d, d, 1]),
                    sport: 1,
                    dport: port,
                    icmp: None,
                    later_fragment: false,
                };
                // Atoms are in rule order, so the first accepting rule is the same too.
                prop_assert_eq!(c.accepts(&p), naive(&rules, &p), "{:?}", p);
            }
        }
    }
}
