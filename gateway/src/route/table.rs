//! The routing table: prefixes → ordered candidate peers with one *primary* each, and
//! longest-prefix match over the primaries.
//!
//! Routes come from *sources* (static config now, the coordination server's netmap later),
//! each replacing its own set of [`Advert`]s as a whole ([`RouteTable::replace_source`], or
//! [`RouteTable::apply`] with a [`RouteFeed`]); the table merges them. Per prefix, candidates
//! are ordered by rank (lower first), then by when they were first advertised. The primary is
//! the best-ranked *live* candidate; among equal ranks the current primary stays (no flapping,
//! no needless moves of SNATed flows between routers). Marking a peer down promotes the next
//! live standby of each of its prefixes at once; a prefix with no live candidate is withdrawn,
//! so lookups fall back to shorter prefixes.
//!
//! Exit routes (`0.0.0.0/0`, `::/0`) are only used from the peer chosen with
//! [`RouteTable::set_exit_node`]; with [`RouteTable::set_lan_exclusions`]
//! (`--exit-node-allow-lan-access`), addresses in the local LAN prefixes never take an exit
//! route.
//!
//! Every mutation returns the [`RouteChange`]s of primaries, so the BPF LPM map and kernel
//! routes can mirror the table exactly. Lookup and single-prefix updates cost O(1) hash
//! operations (one map per prefix length in [`PrefixTable`]).

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::IpAddr;

use ipnet::IpNet;

use super::PrefixTable;

/// Identifies where a set of routes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub u16);

impl SourceId {
    /// Static configuration (peers' allowed IPs, `routes`, `exit_node`).
    pub const STATIC: SourceId = SourceId(0);
    /// The coordination server's netmap.
    pub const CONTROL: SourceId = SourceId(1);
}

/// One peer's advertisement of one prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Advert<P> {
    /// The prefix (host bits are ignored).
    pub prefix: IpNet,
    /// The peer that routes it.
    pub peer: P,
    /// Preference: lower wins; equal ranks keep the current primary, then the earliest.
    pub rank: u32,
}

/// A producer of route advertisements: static config, a netmap.
pub trait RouteFeed<P> {
    /// The source its routes are filed under.
    fn source(&self) -> SourceId;
    /// The complete current set of advertisements.
    fn adverts(&self) -> Vec<Advert<P>>;
}

/// One peer in static configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticPeer<P> {
    /// The peer.
    pub peer: P,
    /// Its WireGuard allowed IPs (its own tailnet addresses, usually).
    pub allowed_ips: Vec<IpNet>,
    /// Subnet routes it serves (`routes` in the peer's config).
    pub routes: Vec<IpNet>,
    /// It offers exit-node service (`0.0.0.0/0` and `::/0`).
    pub exit_node: bool,
}

/// Routes from static configuration; peers listed earlier win ties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StaticRoutes<P> {
    /// The configured peers, in config order.
    pub peers: Vec<StaticPeer<P>>,
}

/// `0.0.0.0/0`.
pub const EXIT_V4: IpNet = IpNet::V4(ipnet::Ipv4Net::new_assert(
    std::net::Ipv4Addr::UNSPECIFIED,
    0,
));
/// `::/0`.
pub const EXIT_V6: IpNet = IpNet::V6(ipnet::Ipv6Net::new_assert(
    std::net::Ipv6Addr::UNSPECIFIED,
    0,
));

impl<P: Copy> RouteFeed<P> for StaticRoutes<P> {
    fn source(&self) -> SourceId {
        SourceId::STATIC
    }

    fn adverts(&self) -> Vec<Advert<P>> {
        let mut out = Vec::new();
        for p in &self.peers {
            let exits = if p.exit_node {
                &[EXIT_V4, EXIT_V6][..]
            } else {
                &[]
            };
            for prefix in p.allowed_ips.iter().chain(&p.routes).chain(exits) {
                out.push(Advert {
                    prefix: *prefix,
                    peer: p.peer,
                    rank: 0,
                });
            }
        }
        out
    }
}

/// Where a packet to an address goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<P> {
    /// Through the tunnel to `peer`, matched by `prefix`.
    Peer {
        /// The primary for the prefix.
        peer: P,
        /// The longest matching prefix.
        prefix: IpNet,
    },
    /// Would take the exit route but is on the local LAN (allow-LAN-access): not tunneled.
    LanDirect,
    /// No route.
    NoRoute,
}

/// The primary of `prefix` changed (`None`: withdrawn, no live candidate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteChange<P> {
    /// The prefix (host bits cleared).
    pub prefix: IpNet,
    /// Its new primary.
    pub primary: Option<P>,
}

/// A candidate next hop for a prefix, as shown by [`RouteTable::candidates`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<P> {
    /// The peer.
    pub peer: P,
    /// Source of the advertisement.
    pub source: SourceId,
    /// Its rank.
    pub rank: u32,
    /// Usable now (peer up; for exit routes, the chosen exit node).
    pub live: bool,
    /// It is the primary.
    pub primary: bool,
}

#[derive(Debug, Clone)]
struct Cand<P> {
    peer: P,
    source: SourceId,
    rank: u32,
    seq: u64,
}

#[derive(Debug, Clone)]
struct Entry<P> {
    /// Sorted by (rank, seq).
    cands: Vec<Cand<P>>,
    primary: Option<P>,
}

/// Prefixes to re-resolve, each once, in first-touched order.
#[derive(Default)]
struct Touched {
    list: Vec<IpNet>,
    seen: HashSet<IpNet>,
}

impl Touched {
    fn add(&mut self, prefix: IpNet) {
        if self.seen.insert(prefix) {
            self.list.push(prefix);
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Installed<P> {
    prefix: IpNet,
    peer: P,
}

/// The routing table over peers of type `P` (e.g. a peer id).
#[derive(Debug, Clone)]
pub struct RouteTable<P> {
    prefixes: HashMap<IpNet, Entry<P>>,
    lpm: PrefixTable<Installed<P>>,
    by_peer: HashMap<P, HashSet<IpNet>>,
    by_source: HashMap<SourceId, HashMap<(IpNet, P), u32>>,
    down: HashSet<P>,
    exit_node: Option<P>,
    lan: PrefixTable<()>,
    lan_prefixes: Vec<IpNet>,
    seq: u64,
}

impl<P: Copy + Eq + Hash> Default for RouteTable<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Copy + Eq + Hash> RouteTable<P> {
    /// An empty table.
    pub fn new() -> Self {
        RouteTable {
            prefixes: HashMap::new(),
            lpm: PrefixTable::new(),
            by_peer: HashMap::new(),
            by_source: HashMap::new(),
            down: HashSet::new(),
            exit_node: None,
            lan: PrefixTable::new(),
            lan_prefixes: Vec::new(),
            seq: 0,
        }
    }

    /// Where a packet to `addr` goes.
    pub fn lookup(&self, addr: IpAddr) -> Lookup<P> {
        match self.lpm.lookup(addr) {
            Some(i) if i.prefix.prefix_len() == 0 && self.lan.lookup(addr).is_some() => {
                Lookup::LanDirect
            }
            Some(i) => Lookup::Peer {
                peer: i.peer,
                prefix: i.prefix,
            },
            None => Lookup::NoRoute,
        }
    }

    /// The primary of exactly `prefix`.
    pub fn primary(&self, prefix: &IpNet) -> Option<P> {
        self.prefixes.get(&prefix.trunc()).and_then(|e| e.primary)
    }

    /// Every prefix with a primary, for filling the BPF LPM map or kernel routes.
    pub fn primaries(&self) -> impl Iterator<Item = (IpNet, P)> + '_ {
        self.prefixes
            .iter()
            .filter_map(|(n, e)| e.primary.map(|p| (*n, p)))
    }

    /// The candidates for `prefix` in preference order.
    pub fn candidates(&self, prefix: &IpNet) -> Vec<Candidate<P>> {
        let prefix = prefix.trunc();
        let Some(e) = self.prefixes.get(&prefix) else {
            return Vec::new();
        };
        e.cands
            .iter()
            .map(|c| Candidate {
                peer: c.peer,
                source: c.source,
                rank: c.rank,
                live: self.is_live(&prefix, c.peer),
                primary: e.primary == Some(c.peer),
            })
            .collect()
    }

    /// Number of prefixes with at least one candidate.
    pub fn len(&self) -> usize {
        self.prefixes.len()
    }

    /// True when no prefix is advertised.
    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }

    /// Number of prefixes with a primary (what lookups see).
    pub fn installed_len(&self) -> usize {
        self.lpm.len()
    }

    /// The chosen exit node.
    pub fn exit_node(&self) -> Option<P> {
        self.exit_node
    }

    /// True if `peer` is marked down.
    pub fn is_down(&self, peer: &P) -> bool {
        self.down.contains(peer)
    }

    fn is_live(&self, prefix: &IpNet, peer: P) -> bool {
        !self.down.contains(&peer) && (prefix.prefix_len() != 0 || self.exit_node == Some(peer))
    }

    /// Adds or re-ranks one advertisement from `source`.
    pub fn add(&mut self, source: SourceId, advert: Advert<P>) -> Option<RouteChange<P>> {
        let prefix = advert.prefix.trunc();
        self.insert_cand(source, prefix, advert.peer, advert.rank);
        self.resolve(prefix)
    }

    /// Withdraws one advertisement from `source`.
    pub fn remove(&mut self, source: SourceId, prefix: IpNet, peer: P) -> Option<RouteChange<P>> {
        let prefix = prefix.trunc();
        if self.remove_cand(source, prefix, peer) {
            self.resolve(prefix)
        } else {
            None
        }
    }

    /// Replaces everything `source` advertised with `adverts` (a config reload, a netmap).
    pub fn replace_source(
        &mut self,
        source: SourceId,
        adverts: impl IntoIterator<Item = Advert<P>>,
    ) -> Vec<RouteChange<P>> {
        // New set, in the feed's order (first advertised wins ties); duplicates keep the
        // best rank.
        let mut order: Vec<(IpNet, P)> = Vec::new();
        let mut new: HashMap<(IpNet, P), u32> = HashMap::new();
        for a in adverts {
            let key = (a.prefix.trunc(), a.peer);
            match new.get_mut(&key) {
                Some(r) => *r = (*r).min(a.rank),
                None => {
                    new.insert(key, a.rank);
                    order.push(key);
                }
            }
        }
        let old = self.by_source.get(&source).cloned().unwrap_or_default();
        let mut touched = Touched::default();
        for (prefix, peer) in old.keys() {
            if !new.contains_key(&(*prefix, *peer)) && self.remove_cand(source, *prefix, *peer) {
                touched.add(*prefix);
            }
        }
        for key in order {
            let rank = new[&key];
            if old.get(&key) != Some(&rank) {
                self.insert_cand(source, key.0, key.1, rank);
                touched.add(key.0);
            }
        }
        self.resolve_all(touched.list)
    }

    /// Replaces a feed's routes with its current advertisements.
    pub fn apply(&mut self, feed: &impl RouteFeed<P>) -> Vec<RouteChange<P>> {
        self.replace_source(feed.source(), feed.adverts())
    }

    /// Removes every advertisement of `peer` (it left the tailnet).
    pub fn remove_peer(&mut self, peer: P) -> Vec<RouteChange<P>> {
        let prefixes: Vec<IpNet> = self
            .by_peer
            .get(&peer)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        let sources: Vec<SourceId> = self.by_source.keys().copied().collect();
        for prefix in &prefixes {
            for source in &sources {
                self.remove_cand(*source, *prefix, peer);
            }
        }
        self.down.remove(&peer);
        if self.exit_node == Some(peer) {
            self.exit_node = None;
        }
        self.resolve_all(prefixes)
    }

    /// Marks `peer` up or down; down promotes the next live standby of each of its prefixes.
    pub fn set_peer_up(&mut self, peer: P, up: bool) -> Vec<RouteChange<P>> {
        let changed = if up {
            self.down.remove(&peer)
        } else {
            self.down.insert(peer)
        };
        if !changed {
            return Vec::new();
        }
        let prefixes: Vec<IpNet> = self
            .by_peer
            .get(&peer)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        self.resolve_all(prefixes)
    }

    /// Chooses the exit node (`--exit-node`); `None` stops using one.
    pub fn set_exit_node(&mut self, peer: Option<P>) -> Vec<RouteChange<P>> {
        if self.exit_node == peer {
            return Vec::new();
        }
        self.exit_node = peer;
        self.resolve_all([EXIT_V4, EXIT_V6])
    }

    /// Local LAN prefixes that never take the exit route (`--exit-node-allow-lan-access`);
    /// empty turns it off.
    pub fn set_lan_exclusions(&mut self, prefixes: impl IntoIterator<Item = IpNet>) {
        self.lan = PrefixTable::new();
        self.lan_prefixes.clear();
        for p in prefixes {
            let p = p.trunc();
            self.lan.insert(p, ());
            self.lan_prefixes.push(p);
        }
    }

    /// The LAN prefixes excluded from the exit route.
    pub fn lan_exclusions(&self) -> &[IpNet] {
        &self.lan_prefixes
    }

    fn insert_cand(&mut self, source: SourceId, prefix: IpNet, peer: P, rank: u32) {
        let entry = self.prefixes.entry(prefix).or_insert_with(|| Entry {
            cands: Vec::new(),
            primary: None,
        });
        let seq = match entry
            .cands
            .iter()
            .position(|c| c.peer == peer && c.source == source)
        {
            Some(i) => entry.cands.remove(i).seq,
            None => {
                self.seq += 1;
                self.seq
            }
        };
        let at = entry
            .cands
            .partition_point(|c| (c.rank, c.seq) < (rank, seq));
        entry.cands.insert(
            at,
            Cand {
                peer,
                source,
                rank,
                seq,
            },
        );
        self.by_peer.entry(peer).or_default().insert(prefix);
        self.by_source
            .entry(source)
            .or_default()
            .insert((prefix, peer), rank);
    }

    /// Removes a candidate; true if it existed.
    fn remove_cand(&mut self, source: SourceId, prefix: IpNet, peer: P) -> bool {
        let Some(entry) = self.prefixes.get_mut(&prefix) else {
            return false;
        };
        let Some(i) = entry
            .cands
            .iter()
            .position(|c| c.peer == peer && c.source == source)
        else {
            return false;
        };
        entry.cands.remove(i);
        if !entry.cands.iter().any(|c| c.peer == peer) {
            if let Some(set) = self.by_peer.get_mut(&peer) {
                set.remove(&prefix);
                if set.is_empty() {
                    self.by_peer.remove(&peer);
                }
            }
        }
        if let Some(m) = self.by_source.get_mut(&source) {
            m.remove(&(prefix, peer));
            if m.is_empty() {
                self.by_source.remove(&source);
            }
        }
        true
    }

    fn resolve_all(&mut self, prefixes: impl IntoIterator<Item = IpNet>) -> Vec<RouteChange<P>> {
        prefixes
            .into_iter()
            .filter_map(|p| self.resolve(p))
            .collect()
    }

    /// Recomputes the primary of `prefix` and mirrors it into the LPM table.
    fn resolve(&mut self, prefix: IpNet) -> Option<RouteChange<P>> {
        let (old, new, empty) = {
            let entry = self.prefixes.get(&prefix)?;
            let live = |c: &&Cand<P>| self.is_live(&prefix, c.peer);
            let best = entry.cands.iter().filter(live).map(|c| c.rank).min();
            let new = best.and_then(|best| {
                let keep = entry.primary.filter(|p| {
                    entry
                        .cands
                        .iter()
                        .filter(live)
                        .any(|c| c.peer == *p && c.rank == best)
                });
                keep.or_else(|| {
                    entry
                        .cands
                        .iter()
                        .filter(live)
                        .find(|c| c.rank == best)
                        .map(|c| c.peer)
                })
            });
            (entry.primary, new, entry.cands.is_empty())
        };
        if empty {
            self.prefixes.remove(&prefix);
        } else if let Some(e) = self.prefixes.get_mut(&prefix) {
            e.primary = new;
        }
        if old == new {
            return None;
        }
        match new {
            Some(peer) => {
                self.lpm.insert(prefix, Installed { prefix, peer });
            }
            None => {
                self.lpm.remove(&prefix);
            }
        }
        Some(RouteChange {
            prefix,
            primary: new,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn addr(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn adv(prefix: &str, peer: u32, rank: u32) -> Advert<u32> {
        Advert {
            prefix: net(prefix),
            peer,
            rank,
        }
    }

    fn via(t: &RouteTable<u32>, a: &str) -> Option<u32> {
        match t.lookup(addr(a)) {
            Lookup::Peer { peer, .. } => Some(peer),
            _ => None,
        }
    }

    const A: u32 = 1;
    const B: u32 = 2;
    const C: u32 = 3;

    #[test]
    fn seed_example_longest_prefix_wins() {
        let mut t = RouteTable::new();
        t.replace_source(
            SourceId::STATIC,
            [adv("10.0.0.0/16", A, 0), adv("10.0.1.0/24", B, 0)],
        );
        assert_eq!(
            t.lookup(addr("10.0.1.5")),
            Lookup::Peer {
                peer: B,
                prefix: net("10.0.1.0/24")
            }
        );
        assert_eq!(
            t.lookup(addr("10.0.2.5")),
            Lookup::Peer {
                peer: A,
                prefix: net("10.0.0.0/16")
            }
        );
        assert_eq!(t.lookup(addr("10.1.0.1")), Lookup::NoRoute);
    }

    #[test]
    fn one_primary_and_fast_failover() {
        let mut t = RouteTable::new();
        let changes = t.replace_source(
            SourceId::STATIC,
            [
                adv("192.168.1.0/24", A, 0),
                adv("192.168.1.0/24", B, 0),
                adv("192.168.1.0/24", C, 1),
            ],
        );
        assert_eq!(
            changes,
            vec![RouteChange {
                prefix: net("192.168.1.0/24"),
                primary: Some(A)
            }]
        );
        let cands = t.candidates(&net("192.168.1.0/24"));
        assert_eq!(
            cands.iter().map(|c| c.peer).collect::<Vec<_>>(),
            vec![A, B, C]
        );
        assert_eq!(cands.iter().filter(|c| c.primary).count(), 1);
        // A goes down: B (next standby) takes over in one step.
        assert_eq!(
            t.set_peer_up(A, false),
            vec![RouteChange {
                prefix: net("192.168.1.0/24"),
                primary: Some(B)
            }]
        );
        assert_eq!(via(&t, "192.168.1.7"), Some(B));
        // A comes back: equal rank, B stays (no flapping).
        assert_eq!(t.set_peer_up(A, true), vec![]);
        assert_eq!(via(&t, "192.168.1.7"), Some(B));
        // B and A down: the rank-1 standby serves.
        t.set_peer_up(B, false);
        t.set_peer_up(A, false);
        assert_eq!(via(&t, "192.168.1.7"), Some(C));
        // All down: withdrawn.
        assert_eq!(
            t.set_peer_up(C, false),
            vec![RouteChange {
                prefix: net("192.168.1.0/24"),
                primary: None
            }]
        );
        assert_eq!(t.lookup(addr("192.168.1.7")), Lookup::NoRoute);
        assert_eq!(t.installed_len(), 0);
        assert_eq!(t.len(), 1);
        // A better rank (e.g. the control server's choice) takes over when it comes up.
        t.set_peer_up(C, true);
        assert_eq!(via(&t, "192.168.1.7"), Some(C));
        t.set_peer_up(A, true);
        assert_eq!(via(&t, "192.168.1.7"), Some(A));
    }

    #[test]
    fn withdrawn_prefix_falls_back_to_shorter() {
        let mut t = RouteTable::new();
        t.replace_source(
            SourceId::STATIC,
            [adv("10.0.0.0/16", A, 0), adv("10.0.1.0/24", B, 0)],
        );
        t.set_peer_up(B, false);
        assert_eq!(via(&t, "10.0.1.5"), Some(A));
        t.set_peer_up(B, true);
        assert_eq!(via(&t, "10.0.1.5"), Some(B));
    }

    #[test]
    fn exit_node_and_lan_access() {
        let mut t = RouteTable::new();
        let feed = StaticRoutes {
            peers: vec![
                StaticPeer {
                    peer: A,
                    allowed_ips: vec![net("100.64.0.1/32")],
                    routes: vec![],
                    exit_node: true,
                },
                StaticPeer {
                    peer: B,
                    allowed_ips: vec![net("100.64.0.2/32")],
                    routes: vec![net("10.0.0.0/8")],
                    exit_node: true,
                },
            ],
        };
        t.apply(&feed);
        // No exit node chosen: internet traffic has no route.
        assert_eq!(t.lookup(addr("203.0.113.1")), Lookup::NoRoute);
        assert_eq!(via(&t, "100.64.0.2"), Some(B));
        let ch = t.set_exit_node(Some(B));
        assert_eq!(ch.len(), 2);
        assert_eq!(
            t.lookup(addr("203.0.113.1")),
            Lookup::Peer {
                peer: B,
                prefix: EXIT_V4
            }
        );
        assert_eq!(
            t.lookup(addr("2001:db8::1")),
            Lookup::Peer {
                peer: B,
                prefix: EXIT_V6
            }
        );
        assert_eq!(
            via(&t, "100.64.0.1"),
            Some(A),
            "more specific routes still win"
        );
        assert_eq!(
            via(&t, "192.168.1.20"),
            Some(B),
            "LAN goes through the exit node by default"
        );
        t.set_lan_exclusions([net("192.168.1.0/24"), net("fd00:1::/64")]);
        assert_eq!(t.lookup(addr("192.168.1.20")), Lookup::LanDirect);
        assert_eq!(t.lookup(addr("fd00:1::9")), Lookup::LanDirect);
        assert_eq!(via(&t, "192.168.2.20"), Some(B));
        assert_eq!(
            via(&t, "10.1.2.3"),
            Some(B),
            "exclusions only affect the exit route"
        );
        assert_eq!(t.lan_exclusions().len(), 2);
        t.set_lan_exclusions([]);
        assert_eq!(via(&t, "192.168.1.20"), Some(B));
        // Switch exit node, then the exit node goes offline: fail closed.
        t.set_exit_node(Some(A));
        assert_eq!(via(&t, "203.0.113.1"), Some(A));
        t.set_peer_up(A, false);
        assert_eq!(t.lookup(addr("203.0.113.1")), Lookup::NoRoute);
        assert_eq!(t.set_exit_node(None).len(), 0, "already withdrawn");
        assert_eq!(t.exit_node(), None);
    }

    #[test]
    fn sources_merge_and_replace() {
        let mut t = RouteTable::new();
        t.replace_source(SourceId::STATIC, [adv("10.0.0.0/8", A, 0)]);
        t.replace_source(
            SourceId::CONTROL,
            [adv("10.0.0.0/8", B, 0), adv("10.2.0.0/16", B, 0)],
        );
        assert_eq!(t.candidates(&net("10.0.0.0/8")).len(), 2);
        assert_eq!(via(&t, "10.1.1.1"), Some(A));
        assert_eq!(via(&t, "10.2.1.1"), Some(B));
        // A netmap update withdraws 10.2/16 and re-ranks B as preferred for 10/8.
        let ch = t.replace_source(
            SourceId::CONTROL,
            [Advert {
                prefix: net("10.9.9.9/8"),
                peer: B,
                rank: 0,
            }],
        );
        assert_eq!(
            ch,
            vec![RouteChange {
                prefix: net("10.2.0.0/16"),
                primary: None
            }]
        );
        // Control also lists A, ranked below B; static A (rank 0, current) keeps the tie.
        let ch = t.replace_source(
            SourceId::CONTROL,
            [adv("10.0.0.0/8", A, 5), adv("10.0.0.0/8", B, 0)],
        );
        assert_eq!(ch, vec![]);
        assert_eq!(via(&t, "10.1.1.1"), Some(A));
        // Removing the static source leaves control's choice.
        let ch = t.replace_source(SourceId::STATIC, []);
        assert_eq!(
            ch,
            vec![RouteChange {
                prefix: net("10.0.0.0/8"),
                primary: Some(B)
            }]
        );
        // Single adds/removes.
        assert_eq!(
            t.add(SourceId::STATIC, adv("172.16.0.0/12", C, 0)),
            Some(RouteChange {
                prefix: net("172.16.0.0/12"),
                primary: Some(C)
            })
        );
        assert_eq!(t.add(SourceId::STATIC, adv("172.16.0.0/12", C, 0)), None);
        assert_eq!(
            t.remove(SourceId::STATIC, net("172.16.0.0/12"), C),
            Some(RouteChange {
                prefix: net("172.16.0.0/12"),
                primary: None
            })
        );
        assert_eq!(t.remove(SourceId::STATIC, net("172.16.0.0/12"), C), None);
        // A peer leaving removes all its routes.
        let ch = t.remove_peer(B);
        assert_eq!(
            ch,
            vec![RouteChange {
                prefix: net("10.0.0.0/8"),
                primary: Some(A)
            }]
        );
        t.remove_peer(A);
        assert!(t.is_empty());
        assert_eq!(t.primaries().count(), 0);
    }

    #[test]
    fn static_feed_order_breaks_ties() {
        for (first, second) in [(A, B), (B, A)] {
            let mut t = RouteTable::new();
            let mk = |peer| StaticPeer {
                peer,
                allowed_ips: vec![],
                routes: vec![net("10.0.0.0/24")],
                exit_node: false,
            };
            t.apply(&StaticRoutes {
                peers: vec![mk(first), mk(second)],
            });
            assert_eq!(via(&t, "10.0.0.1"), Some(first));
            // Re-applying the same config changes nothing.
            assert!(t
                .apply(&StaticRoutes {
                    peers: vec![mk(first), mk(second)]
                })
                .is_empty());
        }
    }

    #[test]
    fn via6_prefixes_route_like_any_other() {
        let mut t = RouteTable::new();
        t.replace_source(
            SourceId::STATIC,
            [
                adv("fd7a:115c:a1e0:b1a:0:7:a01:100/120", A, 0),
                adv("fd7a:115c:a1e0:b1a:0:8:a01:100/120", B, 0),
            ],
        );
        assert_eq!(via(&t, "fd7a:115c:a1e0:b1a:0:7:a01:105"), Some(A));
        assert_eq!(via(&t, "fd7a:115c:a1e0:b1a:0:8:a01:105"), Some(B));
    }

    /// splitmix64, for reproducible large tests without extra dependencies.
    fn rng(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// One million random IPv4 prefixes: inserts and lookups agree with brute force on a
    /// sample of addresses.
    #[test]
    fn million_prefixes() {
        let mut s = 42u64;
        let mut t = RouteTable::new();
        let mut nets: Vec<(u32, u8, u32)> = Vec::with_capacity(1_000_000);
        let mut first: HashMap<(u32, u8), u32> = HashMap::with_capacity(1_000_000);
        let started = std::time::Instant::now();
        for _ in 0..1_000_000 {
            let r = rng(&mut s);
            // Mostly /16../24 like a full table, some longer and shorter.
            let len =
                [8u8, 12, 16, 18, 20, 22, 24, 24, 24, 24, 24, 28, 32][(r >> 40) as usize % 13];
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            let a = (r as u32) & mask;
            let peer = (r >> 48) as u32 % 1000;
            t.add(
                SourceId::CONTROL,
                Advert {
                    prefix: IpNet::V4(ipnet::Ipv4Net::new_assert(Ipv4Addr::from(a), len)),
                    peer,
                    rank: 0,
                },
            );
            first.entry((a, len)).or_insert(peer);
            nets.push((a, len, mask));
        }
        let inserted = started.elapsed();
        assert_eq!(t.len(), first.len());
        // Probes: half inside inserted prefixes, half anywhere.
        let probes: Vec<u32> = (0..400)
            .map(|i| {
                let r = rng(&mut s);
                if i % 2 == 0 {
                    let (a, _, mask) = nets[(r as usize) % nets.len()];
                    a | ((r >> 32) as u32 & !mask)
                } else {
                    r as u32
                }
            })
            .collect();
        let mut best: Vec<Option<(u8, u32)>> = vec![None; probes.len()];
        for &(a, len, mask) in &nets {
            for (i, &p) in probes.iter().enumerate() {
                if p & mask == a && best[i].is_none_or(|(l, _)| len > l) {
                    best[i] = Some((len, a));
                }
            }
        }
        let started = std::time::Instant::now();
        for (i, &p) in probes.iter().enumerate() {
            let want = best[i].map(|(len, a)| (first[&(a, len)], len));
            let got = match t.lookup(IpAddr::V4(Ipv4Addr::from(p))) {
                Lookup::Peer { peer, prefix } => Some((peer, prefix.prefix_len())),
                _ => None,
            };
            assert_eq!(got, want, "probe {}", Ipv4Addr::from(p));
        }
        let looked_up = started.elapsed();
        eprintln!(
            "1M prefixes: insert {inserted:?}, {} lookups {looked_up:?}",
            probes.len()
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(u8, u8, u8, u32),
        Remove(u8, u8, u8),
        Replace(u8, Vec<(u8, u8, u32)>),
        Down(u8),
        Up(u8),
        Exit(Option<u8>),
        RemovePeer(u8),
        Lan(Vec<u8>),
    }

    /// Small prefix space so overlaps are common: index → prefix.
    fn prefix_of(i: u8) -> IpNet {
        const P: [&str; 12] = [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "10.0.0.0/16",
            "10.0.1.0/24",
            "10.0.1.128/25",
            "10.0.1.5/32",
            "10.1.0.0/16",
            "192.168.0.0/16",
            "192.168.1.0/24",
            "::/0",
            "fd00::/8",
            "fd00:1::/64",
        ];
        net(P[i as usize % P.len()])
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (0u8..2, 0u8..12, 0u8..4, 0u32..3).prop_map(|(s, p, peer, r)| Op::Add(s, p, peer, r)),
            2 => (0u8..2, 0u8..12, 0u8..4).prop_map(|(s, p, peer)| Op::Remove(s, p, peer)),
            1 => (0u8..2, proptest::collection::vec((0u8..12, 0u8..4, 0u32..3), 0..6)).prop_map(|(s, v)| Op::Replace(s, v)),
            2 => (0u8..4).prop_map(Op::Down),
            2 => (0u8..4).prop_map(Op::Up),
            1 => proptest::option::of(0u8..4).prop_map(Op::Exit),
            1 => (0u8..4).prop_map(Op::RemovePeer),
            1 => proptest::collection::vec(0u8..12, 0..3).prop_map(Op::Lan),
        ]
    }

    proptest! {
        /// After any sequence of operations, lookups agree with a from-scratch model, the
        /// primary is always a best-ranked live candidate, and replaying the returned changes
        /// reproduces the installed primaries (what the BPF map mirror would hold).
        #[test]
        fn matches_model(ops in proptest::collection::vec(op(), 1..40),
                         probes in proptest::collection::vec(prop_oneof![
                             any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
                             (0u32..0x0002_0000).prop_map(|a| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | a))),
                             (0u32..0x200).prop_map(|a| IpAddr::V4(Ipv4Addr::from(0xc0a8_0000 | a))),
                             any::<u16>().prop_map(|a| IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, a))),
                             any::<u128>().prop_map(|a| IpAddr::V6(std::net::Ipv6Addr::from(a))),
                         ], 1..40)) {
            let mut t: RouteTable<u32> = RouteTable::new();
            // Model: every (source, prefix, peer) → rank; down set; exit node; LAN.
            let mut adverts: HashMap<(u16, IpNet, u32), u32> = HashMap::new();
            let mut down: HashSet<u32> = HashSet::new();
            let mut exit: Option<u32> = None;
            let mut lan: Vec<IpNet> = Vec::new();
            let mut mirror: HashMap<IpNet, u32> = HashMap::new();
            for op in ops {
                let changes = match op {
                    Op::Add(s, p, peer, rank) => {
                        adverts.insert((s.into(), prefix_of(p), peer.into()), rank);
                        t.add(SourceId(s.into()), Advert { prefix: prefix_of(p), peer: peer.into(), rank }).into_iter().collect()
                    }
                    Op::Remove(s, p, peer) => {
                        adverts.remove(&(s.into(), prefix_of(p), peer.into()));
                        t.remove(SourceId(s.into()), prefix_of(p), peer.into()).into_iter().collect()
                    }
                    Op::Replace(s, v) => {
                        adverts.retain(|(src, _, _), _| *src != u16::from(s));
                        let mut list = Vec::new();
                        for (p, peer, rank) in v {
                            let key = (u16::from(s), prefix_of(p), u32::from(peer));
                            let r = adverts.get(&key).map_or(rank, |old| rank.min(*old));
                            adverts.insert(key, r);
                            list.push(Advert { prefix: prefix_of(p), peer: peer.into(), rank });
                        }
                        t.replace_source(SourceId(s.into()), list)
                    }
                    Op::Down(p) => { down.insert(p.into()); t.set_peer_up(p.into(), false) }
                    Op::Up(p) => { down.remove(&u32::from(p)); t.set_peer_up(p.into(), true) }
                    Op::Exit(p) => { exit = p.map(u32::from); t.set_exit_node(exit) }
                    Op::RemovePeer(p) => {
                        let p = u32::from(p);
                        adverts.retain(|(_, _, peer), _| *peer != p);
                        down.remove(&p);
                        if exit == Some(p) { exit = None; }
                        t.remove_peer(p)
                    }
                    Op::Lan(v) => {
                        lan = v.into_iter().map(prefix_of).collect();
                        t.set_lan_exclusions(lan.clone());
                        Vec::new()
                    }
                };
                for c in changes {
                    match c.primary {
                        Some(p) => { mirror.insert(c.prefix, p); }
                        None => { mirror.remove(&c.prefix); }
                    }
                }
            }
            let live = |prefix: &IpNet, peer: u32| !down.contains(&peer) && (prefix.prefix_len() != 0 || exit == Some(peer));
            // Installed primaries: one per prefix with a live candidate, best rank, mirrored.
            let installed: HashMap<IpNet, u32> = t.primaries().collect();
            prop_assert_eq!(&installed, &mirror);
            let mut prefixes: HashSet<IpNet> = adverts.keys().map(|(_, p, _)| *p).collect();
            prefixes.extend(installed.keys().copied());
            for prefix in &prefixes {
                let best = adverts.iter().filter(|((_, p, peer), _)| p == prefix && live(p, *peer)).map(|(_, r)| *r).min();
                match (best, installed.get(prefix)) {
                    (None, None) => {}
                    (Some(best), Some(peer)) => {
                        let ok = adverts.iter().any(|((_, p, pe), r)| p == prefix && pe == peer && *r == best);
                        prop_assert!(ok, "{} primary {} is not best ranked", prefix, peer);
                        prop_assert!(live(prefix, *peer));
                    }
                    (b, i) => prop_assert!(false, "{}: best {:?} installed {:?}", prefix, b, i),
                }
            }
            // Lookups: longest installed prefix, then the exit/LAN rule.
            for a in probes {
                let m = installed.iter().filter(|(n, _)| n.contains(&a)).max_by_key(|(n, _)| n.prefix_len());
                let want = match m {
                    None => Lookup::NoRoute,
                    Some((n, _)) if n.prefix_len() == 0 && lan.iter().any(|l| l.contains(&a)) => Lookup::LanDirect,
                    Some((n, p)) => Lookup::Peer { peer: *p, prefix: *n },
                };
                prop_assert_eq!(t.lookup(a), want, "{}", a);
            }
        }
    }
}
