//! Path selection per peer: which address its WireGuard packets go to. Pure state (no I/O,
//! the clock passed in); [`super::manager`] carries out what it decides.
//!
//! A peer is reachable through its home relay region from the start. Meanwhile its candidate
//! addresses (the endpoints in the netmap, and those it sends in call-me-maybe messages) are
//! pinged with discovery messages; a pong that comes back over UDP proves a direct path, and
//! packets move to it at once. The direct path is pinged every [`Timing::ping_active`]; when no
//! pong has come for [`Timing::trust`], packets go back to the relay, and the candidates are
//! probed again.
//!
//! When no direct path has worked for [`Timing::peer_relay_after`] and a peer of the tailnet
//! runs a peer relay ([`crate::peer_relay`]), a session with the peer is asked for there; its
//! address (given by the relay, or offered by the peer in a call-me-maybe-via) is bound and
//! pinged like a direct candidate. A session that answers is used while there is no direct
//! path, in preference to the relay servers. When several peers run peer relays, each
//! allocation goes to the next one in turn, so a relay that refuses (full, or the peer is not
//! in its netmap) or is unreachable does not stop the others from being tried; the wait
//! between allocations doubles after every full round without an answer.

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
    /// How long without a direct path before a peer relay session is asked for.
    pub peer_relay_after: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            ping_idle: Duration::from_secs(2),
            ping_active: Duration::from_millis(400),
            trust: Duration::from_millis(1300),
            call_me_maybe: Duration::from_secs(4),
            ping_timeout: Duration::from_secs(5),
            peer_relay_after: Duration::from_secs(3),
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
    /// Through a peer relay's session at this address.
    PeerRelay(SocketAddr),
}

impl Path {
    /// Whether packets go straight to the peer.
    pub fn is_direct(&self) -> bool {
        matches!(self, Path::Direct(_))
    }

    /// The WireGuard endpoint for this path (`None` for a relay region or no path).
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        match self {
            Path::Direct(a) | Path::PeerRelay(a) => Some(*a),
            Path::None | Path::Relay(_) => None,
        }
    }
}

/// What the netmap says about a peer, as far as paths go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its node key.
    pub key: Key,
    /// Its home relay region.
    pub region: Option<u32>,
    /// Its endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// The UDP port of the peer relay it runs, if it runs one.
    pub peer_relay_port: Option<u16>,
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::None => write!(f, "none"),
            Path::Direct(a) => write!(f, "direct {a}"),
            Path::Relay(r) => write!(f, "relay {r}"),
            Path::PeerRelay(a) => write!(f, "peer-relay {a}"),
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
    /// Ask the peer relay `relay` (allocation address `to`) for a session with the peer.
    Allocate {
        /// The peer.
        peer: Key,
        /// The peer relay node.
        relay: Key,
        /// Its allocation address.
        to: SocketAddr,
    },
    /// Bind our address at a peer relay session (starts with a challenge).
    Bind {
        /// The peer relay node.
        relay: Key,
        /// The session's address.
        to: SocketAddr,
    },
    /// Point the peer's WireGuard endpoint here.
    SetPath {
        /// The peer.
        peer: Key,
        /// The new path.
        path: Path,
    },
}

/// An address that answered pings: a direct path, or a peer relay session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Confirmed {
    addr: SocketAddr,
    latency: Duration,
    last_pong: Instant,
}

/// Most peer relay sessions remembered per peer.
const MAX_SESSIONS: usize = 4;
/// A session that has not answered a ping for this long is forgotten (the peer went away,
/// or the relay closed it); the relay closes it on its side too.
const SESSION_SILENCE: Duration = Duration::from_secs(30);
/// Longest wait between allocations for a peer while none has answered.
const MAX_ALLOCATE_BACKOFF: Duration = Duration::from_secs(120);
/// Most addresses learned from pings remembered per peer.
const MAX_LEARNED: usize = 4;

/// A peer relay session toward a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Session {
    addr: SocketAddr,
    relay: Key,
    /// When it was added, or last answered a ping.
    alive: Instant,
}

/// One peer's path state.
#[derive(Debug, Clone)]
struct PeerPath {
    region: Option<u32>,
    netmap_endpoints: Vec<SocketAddr>,
    offered: Vec<SocketAddr>,
    /// Addresses the peer's pings came from (newest last).
    learned: Vec<SocketAddr>,
    pings: HashMap<TxId, (SocketAddr, Instant)>,
    direct: Option<Confirmed>,
    /// Peer relay sessions, newest last.
    sessions: Vec<Session>,
    /// The session that answered pings.
    via: Option<Confirmed>,
    /// Since when there has been no trusted direct path.
    no_direct_since: Option<Instant>,
    last_allocate: Option<Instant>,
    /// Wait before the next allocation; doubles after each round of the peer relays
    /// without an answer.
    allocate_backoff: Duration,
    /// Allocations asked for since a session last answered (which relay is next).
    allocate_attempts: usize,
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
            learned: Vec::new(),
            pings: HashMap::new(),
            direct: None,
            sessions: Vec::new(),
            via: None,
            no_direct_since: None,
            last_allocate: None,
            allocate_backoff: Duration::ZERO,
            allocate_attempts: 0,
            current: Path::None,
            last_probe: None,
            last_active_ping: None,
            last_call: None,
        }
    }

    fn candidates(&self) -> Vec<SocketAddr> {
        let mut c: Vec<SocketAddr> = Vec::new();
        for a in self
            .netmap_endpoints
            .iter()
            .chain(&self.offered)
            .chain(&self.learned)
        {
            if region_of(*a).is_none() && !c.contains(a) {
                c.push(*a);
            }
        }
        c
    }

    fn trusted(&self, now: Instant, t: &Timing) -> Option<Confirmed> {
        self.direct
            .filter(|d| now.saturating_duration_since(d.last_pong) < t.trust)
    }

    /// A new ping id for a ping of `to` sent at `now`, remembered so that its pong is
    /// recognised.
    fn note_ping(&mut self, to: SocketAddr, now: Instant) -> TxId {
        let tx = super::disco::new_tx();
        self.pings.insert(tx, (to, now));
        tx
    }

    /// A ping of `to` for `peer`, remembered so that its pong is recognised.
    fn ping(&mut self, peer: Key, to: SocketAddr, now: Instant) -> Action {
        let tx = self.note_ping(to, now);
        Action::Ping { peer, to, tx }
    }

    fn trusted_via(&self, now: Instant, t: &Timing) -> Option<Confirmed> {
        self.via
            .filter(|d| now.saturating_duration_since(d.last_pong) < t.trust)
    }

    fn session(&self, addr: SocketAddr) -> Option<Session> {
        self.sessions.iter().find(|s| s.addr == addr).copied()
    }

    fn desired(&self, now: Instant, t: &Timing, relay_ok: &dyn Fn(u32) -> bool) -> Path {
        if let Some(d) = self.trusted(now, t) {
            return Path::Direct(d.addr);
        }
        if let Some(v) = self.trusted_via(now, t) {
            return Path::PeerRelay(v.addr);
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
    /// Round-trip time of the path in use when it is direct or a peer relay.
    pub latency: Option<Duration>,
}

/// Every peer's path state.
#[derive(Debug, Default)]
pub struct Paths {
    timing: Timing,
    peers: HashMap<Key, PeerPath>,
    /// Peer relays of the tailnet: node key and allocation address.
    relays: Vec<(Key, SocketAddr)>,
}

impl Paths {
    /// No peers yet.
    pub fn new(timing: Timing) -> Paths {
        Paths {
            timing,
            peers: HashMap::new(),
            relays: Vec::new(),
        }
    }

    /// Makes the peer set exactly `peers`; known peers keep their state. Peers that run a
    /// peer relay (and have an endpoint) become the relays to ask for sessions; sessions at
    /// relays that left are forgotten.
    pub fn sync(&mut self, peers: &[PeerInfo]) {
        self.peers.retain(|k, _| peers.iter().any(|p| p.key == *k));
        self.relays = peers
            .iter()
            .filter_map(|p| {
                let port = p.peer_relay_port?;
                let ip = p.endpoints.iter().find(|e| region_of(**e).is_none())?.ip();
                Some((p.key, SocketAddr::new(ip, port)))
            })
            .collect();
        for info in peers {
            let p = self
                .peers
                .entry(info.key)
                .or_insert_with(|| PeerPath::new(info.region, info.endpoints.clone()));
            p.region = info.region;
            p.netmap_endpoints = info.endpoints.clone();
            let relays = &self.relays;
            p.sessions
                .retain(|s| relays.iter().any(|(k, _)| *k == s.relay));
            if p.via.is_some_and(|v| p.session(v.addr).is_none()) {
                p.via = None;
            }
        }
    }

    /// The path in use for `peer` and its latency.
    pub fn view(&self, peer: &Key) -> Option<PathView> {
        self.peers.get(peer).map(|p| PathView {
            path: p.current,
            latency: match p.current {
                Path::PeerRelay(_) => p.via.map(|d| d.latency),
                _ => p.direct.map(|d| d.latency),
            },
        })
    }

    /// The allocation address of the peer relay run by `relay`, if it runs one.
    pub fn relay_addr(&self, relay: &Key) -> Option<SocketAddr> {
        self.relays
            .iter()
            .find(|(k, _)| k == relay)
            .map(|(_, a)| *a)
    }

    /// The peer and peer relay a session address belongs to.
    pub fn session_at(&self, addr: SocketAddr) -> Option<(Key, Key)> {
        self.peers
            .iter()
            .find_map(|(k, p)| p.session(addr).map(|s| (*k, s.relay)))
    }

    /// Whether `addr` is a session port of a peer relay (its IP, a port in the session
    /// range above its allocation port).
    fn is_session_port(&self, addr: SocketAddr) -> bool {
        self.relays.iter().any(|(_, a)| {
            let first = u32::from(a.port()) + 1;
            let last = u32::from(a.port()) + u32::from(crate::peer_relay::DEFAULT_SESSIONS);
            a.ip() == addr.ip() && (first..=last).contains(&u32::from(addr.port()))
        })
    }

    /// Forgets every peer relay session (our key changed: the relays know us by the old one).
    pub fn forget_sessions(&mut self) {
        for p in self.peers.values_mut() {
            p.sessions.clear();
            p.via = None;
        }
    }

    /// A session with `peer` at `addr` on the peer relay `relay` (allocated by us, or offered
    /// by the peer) at `now`: remembered, and bound at once. Sessions at unknown relays, or
    /// at an address that is not one of the relay's session ports, are refused. The session
    /// in use is never pushed out by a new one.
    pub fn add_session(
        &mut self,
        peer: &Key,
        relay: &Key,
        addr: SocketAddr,
        now: Instant,
    ) -> Vec<Action> {
        let known = relay != peer
            && self.relay_addr(relay).is_some_and(|a| a.ip() == addr.ip())
            && self.is_session_port(addr);
        let Some(p) = self.peers.get_mut(peer).filter(|_| known) else {
            return Vec::new();
        };
        if p.session(addr).is_none() {
            if p.sessions.len() >= MAX_SESSIONS {
                let via = p.via.map(|v| v.addr);
                match p.sessions.iter().position(|s| Some(s.addr) != via) {
                    Some(i) => {
                        p.sessions.remove(i);
                    }
                    None => return Vec::new(),
                }
            }
            p.sessions.push(Session {
                addr,
                relay: *relay,
                alive: now,
            });
        }
        vec![Action::Bind {
            relay: *relay,
            to: addr,
        }]
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
            p.sessions
                .retain(|s| now.saturating_duration_since(s.alive) < SESSION_SILENCE);
            if p.via.is_some_and(|v| p.session(v.addr).is_none()) {
                p.via = None;
            }
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
            // The path in use is pinged often; without a direct path the candidates (and
            // the peer relay sessions, bound again first) are probed every `ping_idle`.
            let trusted = p.trusted(now, &t);
            let via = p.trusted_via(now, &t).filter(|_| trusted.is_none());
            if let Some(d) = trusted.or(via) {
                if due(p.last_active_ping, t.ping_active) {
                    p.last_active_ping = Some(now);
                    out.push(p.ping(*key, d.addr, now));
                }
            }
            match trusted {
                Some(_) => p.no_direct_since = None,
                None => {
                    let since = *p.no_direct_since.get_or_insert(now);
                    if due(p.last_probe, t.ping_idle) {
                        p.last_probe = Some(now);
                        for to in p.candidates() {
                            out.push(p.ping(*key, to, now));
                        }
                        if via.is_none() {
                            for s in p.sessions.clone() {
                                out.push(Action::Bind {
                                    relay: s.relay,
                                    to: s.addr,
                                });
                                out.push(p.ping(*key, s.addr, now));
                            }
                        }
                    }
                    // Peer relays other than the peer itself, asked in turn.
                    let relays: Vec<(Key, SocketAddr)> = self
                        .relays
                        .iter()
                        .filter(|(k, _)| k != key)
                        .copied()
                        .collect();
                    if !relays.is_empty()
                        && via.is_none()
                        && now.saturating_duration_since(since) >= t.peer_relay_after
                        && due(p.last_allocate, p.allocate_backoff)
                    {
                        let (relay, to) = relays[p.allocate_attempts % relays.len()];
                        p.last_allocate = Some(now);
                        p.allocate_attempts += 1;
                        // Backs off after each round without an answer (an offline peer).
                        if p.allocate_attempts % relays.len() == 0 {
                            p.allocate_backoff = (p.allocate_backoff * 2)
                                .clamp(t.call_me_maybe, MAX_ALLOCATE_BACKOFF);
                        } else {
                            p.allocate_backoff = p.allocate_backoff.max(t.call_me_maybe);
                        }
                        out.push(Action::Allocate {
                            peer: *key,
                            relay,
                            to,
                        });
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
        if let Some(s) = p.sessions.iter_mut().find(|s| s.addr == from) {
            s.alive = now;
            p.allocate_backoff = Duration::ZERO;
            p.allocate_attempts = 0;
            p.via = Some(Confirmed {
                addr: from,
                latency,
                last_pong: now,
            });
            let path = Path::PeerRelay(from);
            return (p.trusted(now, &self.timing).is_none() && p.current != path).then(|| {
                p.current = path;
                Action::SetPath { peer: *peer, path }
            });
        }
        let better = match p.direct {
            None => true,
            Some(d) => {
                d.addr == from
                    || now.saturating_duration_since(d.last_pong) >= self.timing.trust
                    || latency * 5 < d.latency * 4
            }
        };
        if better {
            p.direct = Some(Confirmed {
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
        Some(self.peers.get_mut(peer)?.note_ping(to, now))
    }

    /// The peer's relay region and its direct candidates (for a ping that also probes).
    pub fn targets(&self, peer: &Key) -> Option<(Option<u32>, Vec<SocketAddr>)> {
        self.peers.get(peer).map(|p| (p.region, p.candidates()))
    }

    /// The peer pinged us over UDP from `from`: an address that reaches it (say its NAT's
    /// mapping toward us, useless to anyone else). Unless it is a peer relay session or
    /// already a candidate, it becomes one and is pinged now when there is no direct path.
    pub fn on_ping(&mut self, peer: &Key, from: SocketAddr, now: Instant) -> Vec<Action> {
        if region_of(from).is_some() || self.is_session_port(from) {
            return Vec::new();
        }
        let Some(p) = self.peers.get_mut(peer) else {
            return Vec::new();
        };
        if p.candidates().contains(&from) {
            return Vec::new();
        }
        if p.learned.len() >= MAX_LEARNED {
            p.learned.remove(0);
        }
        p.learned.push(from);
        if p.trusted(now, &self.timing).is_some() {
            return Vec::new();
        }
        vec![p.ping(*peer, from, now)]
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
                out.push(p.ping(*peer, to, now));
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

    fn info(key: Key, region: Option<u32>, endpoints: Vec<SocketAddr>) -> PeerInfo {
        PeerInfo {
            key,
            region,
            endpoints,
            peer_relay_port: None,
        }
    }

    #[test]
    fn starts_on_the_relay_moves_direct_on_a_pong_and_back_when_pongs_stop() {
        let t = Timing::default();
        let mut paths = Paths::new(t);
        let (k, ep): (Key, SocketAddr) = (key(1), "198.51.100.7:41641".parse().unwrap());
        paths.sync(&[info(k, Some(900), vec![ep])]);
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
        paths.sync(&[info(k, Some(7), vec![])]);
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
        paths.sync(&[info(k, Some(900), vec![ep])]);
        let a = paths.tick(Instant::now(), &|_| false);
        assert!(a.contains(&Action::SetPath {
            peer: k,
            path: Path::Direct(ep)
        }));
        paths.sync(&[]);
        assert!(!paths.knows(&k));
    }

    #[test]
    fn without_a_direct_path_a_peer_relay_session_is_used_before_the_relay_servers() {
        let t = Timing::default();
        let mut paths = Paths::new(t);
        let (k, relay) = (key(5), key(6));
        let relay_ep: SocketAddr = "198.51.100.9:41641".parse().unwrap();
        let mut r = info(relay, Some(900), vec![relay_ep]);
        r.peer_relay_port = Some(41642);
        paths.sync(&[info(k, Some(900), vec!["192.0.2.5:1".parse().unwrap()]), r]);
        let alloc_addr: SocketAddr = "198.51.100.9:41642".parse().unwrap();
        assert_eq!(paths.relay_addr(&relay), Some(alloc_addr));
        let t0 = Instant::now();
        let allocations = |a: &[Action]| {
            a.iter()
                .filter(|x| matches!(x, Action::Allocate { peer, .. } if *peer == k))
                .count()
        };
        assert_eq!(allocations(&paths.tick(t0, ALL_RELAYS)), 0, "direct first");
        let a = paths.tick(t0 + t.peer_relay_after, ALL_RELAYS);
        assert!(a.contains(&Action::Allocate {
            peer: k,
            relay,
            to: alloc_addr
        }));
        // The relay never relays for itself, and sessions elsewhere are refused.
        assert!(paths
            .tick(t0 + t.peer_relay_after, ALL_RELAYS)
            .iter()
            .all(|x| !matches!(x, Action::Allocate { peer, .. } if *peer == relay)));
        let session: SocketAddr = "198.51.100.9:41643".parse().unwrap();
        assert!(paths
            .add_session(&k, &relay, "203.0.113.1:41643".parse().unwrap(), t0)
            .is_empty());
        assert!(paths.add_session(&k, &key(7), session, t0).is_empty());
        assert!(
            paths
                .add_session(&k, &relay, "198.51.100.9:41641".parse().unwrap(), t0)
                .is_empty(),
            "not a session port"
        );
        assert_eq!(
            paths.add_session(&k, &relay, session, t0),
            vec![Action::Bind { relay, to: session }]
        );
        assert_eq!(paths.session_at(session), Some((k, relay)));
        // The next probe round binds again and pings the session; its pong moves the peer
        // off the relay server.
        let t1 = t0 + t.peer_relay_after + t.ping_idle;
        let a = paths.tick(t1, ALL_RELAYS);
        assert!(a.contains(&Action::Bind { relay, to: session }));
        let ping = pings(&a)
            .into_iter()
            .find(|(to, _)| *to == session)
            .unwrap();
        assert_eq!(
            paths.on_pong(&k, &ping.1, session, t1),
            Some(Action::SetPath {
                peer: k,
                path: Path::PeerRelay(session)
            })
        );
        assert_eq!(paths.view(&k).unwrap().path, Path::PeerRelay(session));
        // While the session answers, no more allocations; a direct pong still wins.
        let a = paths.tick(t1 + t.ping_active, ALL_RELAYS);
        assert_eq!(allocations(&a), 0);
        let direct: SocketAddr = "192.0.2.5:1".parse().unwrap();
        let tx = paths.note_ping(&k, direct, t1).unwrap();
        assert_eq!(
            paths.on_pong(&k, &tx, direct, t1 + t.ping_active),
            Some(Action::SetPath {
                peer: k,
                path: Path::Direct(direct)
            })
        );
        // The relay leaves the netmap: its sessions are forgotten.
        paths.sync(&[info(k, Some(900), vec![direct])]);
        assert_eq!(paths.session_at(session), None);
    }

    #[test]
    fn allocations_go_to_each_peer_relay_in_turn_and_back_off_per_round() {
        let t = Timing::default();
        let mut paths = Paths::new(t);
        let k = key(20);
        let relay_info = |n: u8| {
            let mut r = info(
                key(n),
                Some(900),
                vec![format!("198.51.100.{n}:41641").parse().unwrap()],
            );
            r.peer_relay_port = Some(41642);
            r
        };
        paths.sync(&[
            info(k, Some(900), vec!["192.0.2.20:1".parse().unwrap()]),
            relay_info(21),
            relay_info(22),
        ]);
        let asked = |a: &[Action]| -> Vec<Key> {
            a.iter()
                .filter_map(|x| match x {
                    Action::Allocate { peer, relay, .. } if *peer == k => Some(*relay),
                    _ => None,
                })
                .collect()
        };
        let t0 = Instant::now();
        assert!(asked(&paths.tick(t0, ALL_RELAYS)).is_empty());
        // Neither answers: the second is asked one wait after the first, then the first
        // again after twice that wait.
        let mut now = t0 + t.peer_relay_after;
        let mut order = Vec::new();
        let mut times = Vec::new();
        for _ in 0..2000 {
            let a = asked(&paths.tick(now, ALL_RELAYS));
            if !a.is_empty() {
                order.extend(a);
                times.push(now);
            }
            if order.len() == 4 {
                break;
            }
            now += Duration::from_millis(100);
        }
        assert_eq!(order, vec![key(21), key(22), key(21), key(22)]);
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps[1] > gaps[0], "backs off after a full round: {gaps:?}");
        assert_eq!(gaps[1], gaps[2], "no back-off within a round: {gaps:?}");
    }

    #[test]
    fn a_ping_from_a_new_address_makes_it_a_candidate() {
        let mut paths = Paths::new(Timing::default());
        let k = key(8);
        let known: SocketAddr = "192.0.2.8:41641".parse().unwrap();
        paths.sync(&[info(k, Some(900), vec![known])]);
        let now = Instant::now();
        let seen: SocketAddr = "203.0.113.80:61000".parse().unwrap();
        let a = paths.on_ping(&k, seen, now);
        assert_eq!(
            pings(&a).iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![seen]
        );
        assert!(paths.targets(&k).unwrap().1.contains(&seen));
        // Known candidates and relay addresses are not added again.
        assert!(paths.on_ping(&k, seen, now).is_empty());
        assert!(paths.on_ping(&k, known, now).is_empty());
        assert!(paths
            .on_ping(&k, "127.3.3.40:900".parse().unwrap(), now)
            .is_empty());
        assert!(paths.on_ping(&key(9), seen, now).is_empty());
    }
}
