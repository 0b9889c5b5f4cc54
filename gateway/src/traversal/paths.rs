//! Path selection per peer: which address its WireGuard packets go to. Pure state (no I/O,
//! the clock passed in); [`super::manager`] carries out what it decides.
//!
//! A peer is reachable through its home relay region from the start. Meanwhile its candidate
//! addresses (the endpoints in the netmap, and those it sends in call-me-maybe messages) are
//! pinged with discovery messages; a pong that comes back over UDP proves a direct path, and
//! packets move to it at once. The direct path is pinged every [`Timing::ping_active`]; when no
//! pong has come for [`Timing::trust`], packets go back to the relay, and the candidates are
//! probed again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::disco::TxId;
use super::relay::region_of;
use crate::wg::Key;

/// How often things happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Between rounds of pings to every candidate while there is no direct path.
    pub ping_idle: Duration,
    /// Between pings on the direct path in use.
    pub ping_active: Duration,
    /// How long a direct path is used after its last pong.
    pub trust: Duration,
    /// Between call-me-maybe messages through the relay while there is no direct path.
    pub call_me_maybe: Duration,
    /// How long an unanswered ping is remembered.
    pub ping_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            ping_idle: Duration::from_secs(2),
            ping_active: Duration::from_millis(400),
            trust: Duration::from_millis(1300),
            call_me_maybe: Duration::from_secs(4),
            ping_timeout: Duration::from_secs(5),
        }
    }
}

/// Where a peer's packets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Nowhere yet (no relay, no candidate).
    None,
    /// Straight to this address.
    Direct(SocketAddr),
    /// Through this relay region.
    Relay(u32),
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::None => write!(f, "none"),
            Path::Direct(a) => write!(f, "direct {a}"),
            Path::Relay(r) => write!(f, "relay {r}"),
        }
    }
}

/// What the manager must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a ping with this id to `to` over UDP.
    Ping {
        /// The peer.
        peer: Key,
        /// The candidate address.
        to: SocketAddr,
        /// The ping's id.
        tx: TxId,
    },
    /// Send our endpoints to the peer through its relay region.
    CallMeMaybe {
        /// The peer.
        peer: Key,
        /// Its relay region.
        region: u32,
    },
    /// Point the peer's WireGuard endpoint here.
    SetPath {
        /// The peer.
        peer: Key,
        /// The new path.
        path: Path,
    },
}

/// A confirmed direct address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Direct {
    addr: SocketAddr,
    latency: Duration,
    last_pong: Instant,
}

/// One peer's path state.
#[derive(Debug, Clone)]
struct PeerPath {
    region: Option<u32>,
    netmap_endpoints: Vec<SocketAddr>,
    offered: Vec<SocketAddr>,
    pings: HashMap<TxId, (SocketAddr, Instant)>,
    direct: Option<Direct>,
    current: Path,
    last_probe: Option<Instant>,
    last_active_ping: Option<Instant>,
    last_call: Option<Instant>,
}

impl PeerPath {
    fn new(region: Option<u32>, endpoints: Vec<SocketAddr>) -> PeerPath {
        PeerPath {
            region,
            netmap_endpoints: endpoints,
            offered: Vec::new(),
            pings: HashMap::new(),
            direct: None,
            current: Path::None,
            last_probe: None,
            last_active_ping: None,
            last_call: None,
        }
    }

    fn candidates(&self) -> Vec<SocketAddr> {
        let mut c: Vec<SocketAddr> = Vec::new();
        for a in self.netmap_endpoints.iter().chain(&self.offered) {
            if region_of(*a).is_none() && !c.contains(a) {
                c.push(*a);
            }
        }
        c
    }

    fn trusted(&self, now: Instant, t: &Timing) -> Option<Direct> {
        self.direct
            .filter(|d| now.saturating_duration_since(d.last_pong) < t.trust)
    }

    fn desired(&self, now: Instant, t: &Timing, relay_ok: &dyn Fn(u32) -> bool) -> Path {
        if let Some(d) = self.trusted(now, t) {
            return Path::Direct(d.addr);
        }
        if let Some(r) = self.region.filter(|r| relay_ok(*r)) {
            return Path::Relay(r);
        }
        match self.candidates().first() {
            Some(a) => Path::Direct(*a),
            None => Path::None,
        }
    }
}

/// What path status shows for a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathView {
    /// The path in use.
    pub path: Path,
    /// Round-trip time of the direct path, when there is one.
    pub latency: Option<Duration>,
}

/// Every peer's path state.
#[derive(Debug, Default)]
pub struct Paths {
    timing: Timing,
    peers: HashMap<Key, PeerPath>,
}

impl Paths {
    /// No peers yet.
    pub fn new(timing: Timing) -> Paths {
        Paths {
            timing,
            peers: HashMap::new(),
        }
    }

    /// Makes the peer set exactly `peers` (key, home relay region, netmap endpoints); known
    /// peers keep their state.
    pub fn sync(&mut self, peers: &[(Key, Option<u32>, Vec<SocketAddr>)]) {
        self.peers
            .retain(|k, _| peers.iter().any(|(p, _, _)| p == k));
        for (key, region, endpoints) in peers {
            let p = self
                .peers
                .entry(*key)
                .or_insert_with(|| PeerPath::new(*region, endpoints.clone()));
            p.region = *region;
            p.netmap_endpoints = endpoints.clone();
        }
    }

    /// The path in use for `peer` and its latency.
    pub fn view(&self, peer: &Key) -> Option<PathView> {
        self.peers.get(peer).map(|p| PathView {
            path: p.current,
            latency: p.direct.map(|d| d.latency),
        })
    }

    /// Whether `peer` is managed here.
    pub fn knows(&self, peer: &Key) -> bool {
        self.peers.contains_key(peer)
    }

    /// Decides paths and pings at `now`; `relay_ok` says whether a region can be used.
    pub fn tick(&mut self, now: Instant, relay_ok: &dyn Fn(u32) -> bool) -> Vec<Action> {
        let t = self.timing;
        let mut out = Vec::new();
        for (key, p) in self.peers.iter_mut() {
            p.pings
                .retain(|_, (_, sent)| now.saturating_duration_since(*sent) < t.ping_timeout);
            let desired = p.desired(now, &t, relay_ok);
            if desired != p.current {
                p.current = desired;
                out.push(Action::SetPath {
                    peer: *key,
                    path: desired,
                });
            }
            let due = |last: Option<Instant>, every: Duration| {
                last.is_none_or(|l| now.saturating_duration_since(l) >= every)
            };
            match p.trusted(now, &t) {
                Some(d) => {
                    if due(p.last_active_ping, t.ping_active) {
                        p.last_active_ping = Some(now);
                        let tx = super::disco::new_tx();
                        p.pings.insert(tx, (d.addr, now));
                        out.push(Action::Ping {
                            peer: *key,
                            to: d.addr,
                            tx,
                        });
                    }
                }
                None => {
                    if due(p.last_probe, t.ping_idle) {
                        p.last_probe = Some(now);
                        for to in p.candidates() {
                            let tx = super::disco::new_tx();
                            p.pings.insert(tx, (to, now));
                            out.push(Action::Ping { peer: *key, to, tx });
                        }
                    }
                    if let Some(region) = p.region.filter(|r| relay_ok(*r)) {
                        if due(p.last_call, t.call_me_maybe) {
                            p.last_call = Some(now);
                            out.push(Action::CallMeMaybe { peer: *key, region });
                        }
                    }
                }
            }
        }
        out
    }

    /// A pong from `peer` arrived over UDP from `from`: if it answers our ping to that
    /// address, the direct path is confirmed (and taken at once if it is new or faster).
    pub fn on_pong(
        &mut self,
        peer: &Key,
        tx: &TxId,
        from: SocketAddr,
        now: Instant,
    ) -> Option<Action> {
        let p = self.peers.get_mut(peer)?;
        let (to, sent) = p.pings.remove(tx)?;
        if to != from {
            return None;
        }
        let latency = now.saturating_duration_since(sent);
        let better = match p.direct {
            None => true,
            Some(d) => {
                d.addr == from
                    || now.saturating_duration_since(d.last_pong) >= self.timing.trust
                    || latency * 5 < d.latency * 4
            }
        };
        if better {
            p.direct = Some(Direct {
                addr: from,
                latency,
                last_pong: now,
            });
        }
        let path = Path::Direct(p.direct?.addr);
        (p.current != path).then(|| {
            p.current = path;
            Action::SetPath { peer: *peer, path }
        })
    }

    /// Records a ping sent outside [`Paths::tick`] (`tailgate ping`), so that its pong, if it
    /// comes over UDP, also confirms the direct path; returns the ping's id.
    pub fn note_ping(&mut self, peer: &Key, to: SocketAddr, now: Instant) -> Option<TxId> {
        let p = self.peers.get_mut(peer)?;
        let tx = super::disco::new_tx();
        p.pings.insert(tx, (to, now));
        Some(tx)
    }

    /// The peer's relay region and its direct candidates (for a ping that also probes).
    pub fn targets(&self, peer: &Key) -> Option<(Option<u32>, Vec<SocketAddr>)> {
        self.peers.get(peer).map(|p| (p.region, p.candidates()))
    }

    /// The peer offered its endpoints (call-me-maybe): remember them and ping them now.
    pub fn on_call_me_maybe(
        &mut self,
        peer: &Key,
        endpoints: &[SocketAddr],
        now: Instant,
    ) -> Vec<Action> {
        let Some(p) = self.peers.get_mut(peer) else {
            return Vec::new();
        };
        p.offered = endpoints
            .iter()
            .copied()
            .filter(|a| region_of(*a).is_none())
            .take(super::disco::MAX_ENDPOINTS)
            .collect();
        let mut out = Vec::new();
        if p.trusted(now, &self.timing).is_none() {
            p.last_probe = Some(now);
            for to in p.candidates() {
                let tx = super::disco::new_tx();
                p.pings.insert(tx, (to, now));
                out.push(Action::Ping {
                    peer: *peer,
                    to,
                    tx,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        Key::from_bytes([b; 32])
    }

    fn pings(actions: &[Action]) -> Vec<(SocketAddr, TxId)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Ping { to, tx, .. } => Some((*to, *tx)),
                _ => None,
            })
            .collect()
    }

    const ALL_RELAYS: &dyn Fn(u32) -> bool = &|_| true;

    #[test]
    fn starts_on_the_relay_moves_direct_on_a_pong_and_back_when_pongs_stop() {
        let t = Timing::default();
        let mut paths = Paths::new(t);
        let (k, ep): (Key, SocketAddr) = (key(1), "198.51.100.7:41641".parse().unwrap());
        paths.sync(&[(k, Some(900), vec![ep])]);
        let t0 = Instant::now();
        let a = paths.tick(t0, ALL_RELAYS);
        assert!(a.contains(&Action::SetPath {
            peer: k,
            path: Path::Relay(900)
        }));
        assert!(a.contains(&Action::CallMeMaybe {
            peer: k,
            region: 900
        }));
        let p = pings(&a);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, ep);
        // A pong from elsewhere (or for an unknown ping) proves nothing.
        assert_eq!(
            paths.on_pong(&k, &p[0].1, "198.51.100.8:1".parse().unwrap(), t0),
            None
        );
        assert_eq!(paths.on_pong(&k, &[9; 12], ep, t0), None);
        // The right pong switches at once.
        let a = paths.tick(t0 + Duration::from_millis(1), ALL_RELAYS);
        assert!(pings(&a).is_empty(), "no new round before ping_idle");
        let t1 = t0 + Duration::from_secs(2);
        let p = pings(&paths.tick(t1, ALL_RELAYS));
        let t2 = t1 + Duration::from_millis(20);
        assert_eq!(
            paths.on_pong(&k, &p[0].1, ep, t2),
            Some(Action::SetPath {
                peer: k,
                path: Path::Direct(ep)
            })
        );
        assert_eq!(
            paths.view(&k).unwrap().latency,
            Some(Duration::from_millis(20))
        );
        // While pongs come, it stays direct and pings every ping_active.
        let mut now = t2;
        for _ in 0..5 {
            now += t.ping_active;
            let a = paths.tick(now, ALL_RELAYS);
            let p = pings(&a);
            assert_eq!(p.len(), 1);
            assert!(!a.iter().any(|x| matches!(x, Action::SetPath { .. })));
            assert_eq!(paths.on_pong(&k, &p[0].1, ep, now), None);
        }
        // Pongs stop: after `trust` it is back on the relay.
        let lost = now + t.trust;
        assert!(paths.tick(lost, ALL_RELAYS).contains(&Action::SetPath {
            peer: k,
            path: Path::Relay(900)
        }));
    }

    #[test]
    fn call_me_maybe_adds_candidates_and_pings_them_now() {
        let mut paths = Paths::new(Timing::default());
        let k = key(2);
        paths.sync(&[(k, Some(7), vec![])]);
        let now = Instant::now();
        let offered: Vec<SocketAddr> = vec![
            "203.0.113.5:1000".parse().unwrap(),
            "127.3.3.40:7".parse().unwrap(),
        ];
        let a = paths.on_call_me_maybe(&k, &offered, now);
        assert_eq!(
            pings(&a).iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![offered[0]],
            "relay addresses are never candidates"
        );
        // Unknown peers are ignored.
        assert!(paths.on_call_me_maybe(&key(3), &offered, now).is_empty());
    }

    #[test]
    fn without_a_usable_relay_the_first_endpoint_is_used() {
        let mut paths = Paths::new(Timing::default());
        let k = key(4);
        let ep: SocketAddr = "192.0.2.1:41641".parse().unwrap();
        paths.sync(&[(k, Some(900), vec![ep])]);
        let a = paths.tick(Instant::now(), &|_| false);
        assert!(a.contains(&Action::SetPath {
            peer: k,
            path: Path::Direct(ep)
        }));
        paths.sync(&[]);
        assert!(!paths.knows(&k));
    }
}
