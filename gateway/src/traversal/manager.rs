//! Carries out [`super::paths`]' decisions for a device: sends discovery pings over UDP and
//! call-me-maybe messages through the relay, answers the peers' pings, and points each peer's
//! WireGuard endpoint at the path chosen for it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use x25519_dalek::StaticSecret;

use tokio::sync::oneshot;

use super::disco::{self, Message, TxId};
use super::paths::{Action, Path, PathView, Paths, PeerInfo, Timing};
use super::relay::{relay_addr, RelayLinks};
use crate::device::{lock, Device};
use crate::wg::Key;

/// How often path decisions run.
const TICK: Duration = Duration::from_millis(100);

/// Where a discovery message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Over UDP from this address.
    Udp(SocketAddr),
    /// Through this relay region.
    Relay(u32),
}

/// Path management for one device.
pub struct PathManager {
    dev: Weak<Device>,
    relay: Arc<RelayLinks>,
    paths: Mutex<Paths>,
    key: RwLock<StaticSecret>,
    own_endpoints: Mutex<Vec<SocketAddr>>,
    /// `tailgate ping` requests waiting for their pong, by ping id.
    waiters: Mutex<HashMap<TxId, oneshot::Sender<(Source, Instant)>>>,
    stun: Mutex<StunProbe>,
}

/// Learning our public address with STUN from the WireGuard socket.
#[derive(Debug)]
struct StunProbe {
    /// Requests sent and not answered yet.
    pending: HashMap<crate::stun::codec::TxId, Instant>,
    /// The address the home region's STUN server saw, and when.
    public: Option<(SocketAddr, Instant)>,
    /// When the next request is due.
    next: Instant,
}

/// Between STUN requests once an answer came, and while none has.
const STUN_EVERY: Duration = Duration::from_secs(20);
const STUN_RETRY: Duration = Duration::from_secs(2);
/// How long a STUN answer stays valid.
const STUN_VALID: Duration = Duration::from_secs(65);

impl PathManager {
    /// A manager for `dev`, whose node key is `key`, using `relay`.
    pub fn new(
        dev: &Arc<Device>,
        relay: Arc<RelayLinks>,
        key: StaticSecret,
        timing: Timing,
    ) -> Arc<PathManager> {
        Arc::new(PathManager {
            dev: Arc::downgrade(dev),
            relay,
            paths: Mutex::new(Paths::new(timing)),
            key: RwLock::new(key),
            own_endpoints: Mutex::new(Vec::new()),
            waiters: Mutex::new(HashMap::new()),
            stun: Mutex::new(StunProbe {
                pending: HashMap::new(),
                public: None,
                next: Instant::now(),
            }),
        })
    }

    /// The relay connections.
    pub fn relay(&self) -> &Arc<RelayLinks> {
        &self.relay
    }

    /// Uses a new node key (rotation).
    pub fn set_key(&self, key: StaticSecret) {
        lock(&self.paths).forget_sessions();
        *self.key.write().expect("disco key lock") = key.clone();
        self.relay.set_key(key);
    }

    /// The addresses we offer peers in call-me-maybe messages (the public address STUN
    /// found is added to them).
    pub fn set_own_endpoints(&self, endpoints: Vec<SocketAddr>) {
        *lock(&self.own_endpoints) = endpoints;
    }

    /// Our endpoints: the public address STUN found (while fresh) first, then the ones set
    /// with [`PathManager::set_own_endpoints`].
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = self.public_endpoint().into_iter().collect();
        for e in lock(&self.own_endpoints).iter() {
            if !out.contains(e) {
                out.push(*e);
            }
        }
        out
    }

    /// The public address the home region's STUN server saw, while fresh.
    pub fn public_endpoint(&self) -> Option<SocketAddr> {
        lock(&self.stun)
            .public
            .filter(|(_, at)| at.elapsed() < STUN_VALID)
            .map(|(a, _)| a)
    }

    /// Sends a STUN binding request from the WireGuard socket when one is due.
    async fn stun_tick(&self) {
        let now = Instant::now();
        {
            let mut s = lock(&self.stun);
            if now < s.next {
                return;
            }
            s.next = now
                + if s.public.is_some() {
                    STUN_EVERY
                } else {
                    STUN_RETRY
                };
            s.pending
                .retain(|_, sent| now.saturating_duration_since(*sent) < STUN_RETRY * 5);
        }
        let (Some(dev), Some(target)) = (self.dev.upgrade(), self.relay.stun_target().await) else {
            return;
        };
        let tx: crate::stun::codec::TxId = disco::new_tx();
        lock(&self.stun).pending.insert(tx, now);
        let req = crate::stun::codec::binding_request(&tx);
        if let Err(e) = dev.socket.send_to(&req, target).await {
            log::debug!("STUN request to {target}: {e}");
        }
    }

    /// A STUN answer arrived on the WireGuard socket; false (a drop for the caller to count)
    /// if it answers nothing we asked.
    pub fn handle_stun(&self, datagram: &[u8]) -> bool {
        let Ok((tx, mapped)) = crate::stun::codec::parse_response(datagram) else {
            return false;
        };
        let mut s = lock(&self.stun);
        if s.pending.remove(&tx).is_none() {
            return false;
        }
        let mapped = crate::io::udp::canonical(mapped);
        if s.public.map(|(a, _)| a) != Some(mapped) {
            log::info!("public endpoint (STUN): {mapped}");
        }
        s.public = Some((mapped, Instant::now()));
        true
    }

    /// Takes the netmap's peers and re-applies the paths in use (a netmap resets endpoints).
    pub fn sync(&self, peers: &[PeerInfo]) {
        let mut paths = lock(&self.paths);
        paths.sync(peers);
        for p in peers {
            if let Some(v) = paths.view(&p.key) {
                self.set_path(&p.key, v.path);
            }
        }
    }

    /// Whether `peer`'s endpoint is chosen here (then WireGuard roaming must not move it).
    pub fn manages(&self, peer: &Key) -> bool {
        lock(&self.paths).knows(peer)
    }

    /// The path in use for `peer`.
    pub fn view(&self, peer: &Key) -> Option<PathView> {
        lock(&self.paths).view(peer)
    }

    /// Runs the decisions every 100 ms until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.stun_tick().await;
            let relay = self.relay.clone();
            let actions = lock(&self.paths).tick(Instant::now(), &|r| relay.connected(r));
            for a in actions {
                self.act(a).await;
            }
        }
    }

    async fn act(&self, action: Action) {
        match action {
            Action::SetPath { peer, path } => self.set_path(&peer, path),
            Action::Ping { peer, to, tx } => {
                self.send_udp(&peer, to, &Message::Ping { tx }).await;
            }
            Action::CallMeMaybe { peer, region } => {
                let endpoints = self.endpoints();
                self.send_relay(&peer, region, &Message::CallMeMaybe { endpoints });
            }
            Action::Allocate { peer, relay, to } => {
                let msg = Message::RelayAllocate {
                    peer: *peer.as_bytes(),
                };
                self.send_udp(&relay, to, &msg).await;
            }
            Action::Bind { relay, to } => {
                self.send_udp(&relay, to, &Message::RelayBind { cookie: None })
                    .await;
            }
        }
    }

    fn set_path(&self, peer: &Key, path: Path) {
        let Some(dev) = self.dev.upgrade() else {
            return;
        };
        let Some(p) = dev.state().peers.get(peer).cloned() else {
            return;
        };
        let endpoint = match path {
            Path::Relay(r) => relay_addr(r),
            other => other.udp_addr(),
        };
        let mut s = lock(&p.settings);
        if s.endpoint != endpoint {
            log::info!("peer {}: path now {path}", peer.short());
            s.endpoint = endpoint;
        }
    }

    fn seal(&self, peer: &Key, msg: &Message) -> Option<Vec<u8>> {
        let key = self.key.read().expect("disco key lock");
        disco::seal(&key, peer.as_bytes(), msg).ok()
    }

    async fn send_udp(&self, peer: &Key, to: SocketAddr, msg: &Message) {
        let (Some(dev), Some(bytes)) = (self.dev.upgrade(), self.seal(peer, msg)) else {
            return;
        };
        if let Err(e) = dev.socket.send_to(&bytes, to).await {
            log::debug!("disco to {to}: {e}");
        }
    }

    fn send_relay(&self, peer: &Key, region: u32, msg: &Message) {
        if let Some(bytes) = self.seal(peer, msg) {
            self.relay.send(region, *peer.as_bytes(), &bytes);
        }
    }

    /// Pings `peer` once over its current path and waits up to `timeout` for the pong; while
    /// the path is the relay, its direct candidates are probed too (so that repeated pings
    /// find a direct path). Returns the path the pong came over and the round-trip time.
    pub async fn ping(&self, peer: &Key, timeout: Duration) -> Result<(Path, Duration), String> {
        let now = Instant::now();
        let (view, targets) = {
            let p = lock(&self.paths);
            (p.view(peer), p.targets(peer))
        };
        let (Some(view), Some((region, candidates))) = (view, targets) else {
            return Err(format!("peer {} is not in the netmap", peer.short()));
        };
        let (tx, waiter) = match view.path {
            Path::Direct(to) | Path::PeerRelay(to) => {
                let tx = lock(&self.paths)
                    .note_ping(peer, to, now)
                    .ok_or("peer left the netmap")?;
                let waiter = self.wait_for(tx);
                self.send_udp(peer, to, &Message::Ping { tx }).await;
                (tx, waiter)
            }
            Path::Relay(r) => {
                let tx = disco::new_tx();
                let waiter = self.wait_for(tx);
                self.send_relay(peer, r, &Message::Ping { tx });
                for to in candidates {
                    let probe = lock(&self.paths).note_ping(peer, to, now);
                    if let Some(probe) = probe {
                        self.send_udp(peer, to, &Message::Ping { tx: probe }).await;
                    }
                }
                if region.is_some() {
                    let endpoints = self.endpoints();
                    self.send_relay(peer, r, &Message::CallMeMaybe { endpoints });
                }
                (tx, waiter)
            }
            Path::None => return Err(format!("no path to peer {} yet", peer.short())),
        };
        let answer = tokio::time::timeout(timeout, waiter).await;
        lock(&self.waiters).remove(&tx);
        match answer {
            Ok(Ok((from, at))) => {
                let rtt = at.saturating_duration_since(now);
                let via_session = |a| lock(&self.paths).session_at(a).is_some();
                Ok(match from {
                    Source::Udp(a) if via_session(a) => (Path::PeerRelay(a), rtt),
                    Source::Udp(a) => (Path::Direct(a), rtt),
                    Source::Relay(r) => (Path::Relay(r), rtt),
                })
            }
            _ => Err(format!("no pong within {timeout:?}")),
        }
    }

    fn wait_for(&self, tx: TxId) -> oneshot::Receiver<(Source, Instant)> {
        let (send, recv) = oneshot::channel();
        let mut waiters = lock(&self.waiters);
        // Abandoned waiters (a client that went away) are not kept forever.
        if waiters.len() > 1024 {
            waiters.clear();
        }
        waiters.insert(tx, send);
        recv
    }

    /// Handles a discovery message from `from`; junk and messages from unknown peers are
    /// ignored (counted by the caller as a drop).
    pub async fn handle(&self, from: Source, datagram: &[u8]) -> bool {
        let opened = {
            let key = self.key.read().expect("disco key lock");
            disco::open(&key, datagram)
        };
        let Ok((sender, msg)) = opened else {
            return false;
        };
        let peer = Key::from_bytes(sender);
        if !self.manages(&peer) {
            return false;
        }
        let now = Instant::now();
        match msg {
            Message::Ping { tx } => {
                let pong = |observed| Message::Pong { tx, observed };
                match from {
                    Source::Udp(addr) => {
                        self.send_udp(&peer, addr, &pong(addr)).await;
                        // Where the ping came from reaches the peer: try it ourselves.
                        let actions = lock(&self.paths).on_ping(&peer, addr, now);
                        for a in actions {
                            self.act(a).await;
                        }
                    }
                    Source::Relay(region) => {
                        if let Some(a) = relay_addr(region) {
                            self.send_relay(&peer, region, &pong(a));
                        }
                    }
                }
            }
            Message::Pong { tx, .. } => {
                if let Some(w) = lock(&self.waiters).remove(&tx) {
                    let _ = w.send((from, now));
                }
                if let Source::Udp(addr) = from {
                    let action = lock(&self.paths).on_pong(&peer, &tx, addr, now);
                    if let Some(a) = action {
                        self.act(a).await;
                    }
                }
            }
            Message::CallMeMaybe { endpoints } => {
                let actions = lock(&self.paths).on_call_me_maybe(&peer, &endpoints, now);
                for a in actions {
                    self.act(a).await;
                }
            }
            other => return self.handle_peer_relay(from, peer, other).await,
        }
        true
    }

    /// The peer relay messages: a session from a relay we asked (bind it and offer it to the
    /// peer), a session offered by a peer (bind it), a relay's challenge and bind answer.
    /// Messages for a relay (allocate, bind) are not for us: false.
    async fn handle_peer_relay(&self, from: Source, sender: Key, msg: Message) -> bool {
        match (msg, from) {
            (Message::RelayAllocated { peer, port }, Source::Udp(src)) => {
                let allocated_here = lock(&self.paths).relay_addr(&sender) == Some(src);
                if !allocated_here {
                    return false;
                }
                let peer = Key::from_bytes(peer);
                let session = SocketAddr::new(src.ip(), port);
                let actions =
                    lock(&self.paths).add_session(&peer, &sender, session, Instant::now());
                if actions.is_empty() {
                    return false;
                }
                log::info!("peer {}: peer relay session at {session}", peer.short());
                for a in actions {
                    self.act(a).await;
                }
                let region = lock(&self.paths).targets(&peer).and_then(|(r, _)| r);
                if let Some(region) = region {
                    let offer = Message::CallMeMaybeVia {
                        relay: *sender.as_bytes(),
                        addr: session,
                    };
                    self.send_relay(&peer, region, &offer);
                }
                true
            }
            (Message::CallMeMaybeVia { relay, addr }, _) => {
                let actions = lock(&self.paths).add_session(
                    &sender,
                    &Key::from_bytes(relay),
                    addr,
                    Instant::now(),
                );
                let known = !actions.is_empty();
                for a in actions {
                    self.act(a).await;
                }
                known
            }
            (Message::RelayChallenge { cookie }, Source::Udp(src)) => {
                let at = lock(&self.paths).session_at(src);
                if !at.is_some_and(|(_, relay)| relay == sender) {
                    return false;
                }
                let bind = Message::RelayBind {
                    cookie: Some(cookie),
                };
                self.send_udp(&sender, src, &bind).await;
                true
            }
            (Message::RelayBound, Source::Udp(src)) => {
                let at = lock(&self.paths).session_at(src);
                let Some((peer, _)) = at.filter(|(_, relay)| *relay == sender) else {
                    return false;
                };
                // Try the session at once rather than at the next probe round.
                let tx = lock(&self.paths).note_ping(&peer, src, Instant::now());
                if let Some(tx) = tx {
                    self.send_udp(&peer, src, &Message::Ping { tx }).await;
                }
                true
            }
            _ => false,
        }
    }
}
