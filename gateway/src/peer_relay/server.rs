//! The peer relay's sockets: the allocation port, and one socket per session that binds the
//! two nodes and then forwards between them.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use x25519_dalek::StaticSecret;

use super::table::{Allocations, BindOutcome, NodeKey, Session};
use crate::device::lock;
use crate::io::udp::WgSocket;
use crate::traversal::disco::{self, Message};

/// A session with no datagram for this long is closed and its port freed.
pub const SESSION_IDLE: Duration = Duration::from_secs(120);
/// Sealed messages opened per second and socket, at most (each costs a key agreement).
const OPENS_PER_SEC: u32 = 200;

/// Counters of a peer relay.
#[derive(Debug, Default)]
pub struct PeerRelayCounters {
    /// Sessions created.
    pub allocations: AtomicU64,
    /// Addresses bound (after a challenge).
    pub binds: AtomicU64,
    /// Datagrams forwarded between two bound nodes.
    pub forwarded_packets: AtomicU64,
    /// Bytes of those datagrams.
    pub forwarded_bytes: AtomicU64,
    /// Datagrams from a bound node whose partner is not bound yet.
    pub dropped_unbound: AtomicU64,
    /// Datagrams that are no message of ours, do not open, or exceed the open budget.
    pub dropped_junk: AtomicU64,
    /// Allocations or binds by nodes not in the tailnet, not members, or when full.
    pub refused: AtomicU64,
}

/// What `tailgate status` shows about the peer relay this node runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRelayStatus {
    /// The allocation port.
    pub port: u16,
    /// Sessions open now.
    pub sessions: usize,
    /// Sessions created.
    pub allocations: u64,
    /// Addresses bound.
    pub binds: u64,
    /// Datagrams forwarded.
    pub forwarded_packets: u64,
    /// Bytes forwarded.
    pub forwarded_bytes: u64,
    /// Datagrams dropped (partner unbound, junk) or refused.
    pub dropped: u64,
}

/// Who may use the relay: a node key in this node's netmap.
pub type Allowed = Box<dyn Fn(&NodeKey) -> bool + Send + Sync>;

struct Inner {
    key: RwLock<StaticSecret>,
    allowed: Allowed,
    allocations: Mutex<Allocations>,
    sessions: Mutex<HashMap<u16, JoinHandle<()>>>,
    counters: PeerRelayCounters,
    idle: Duration,
}

/// A running peer relay; dropping it closes every socket.
pub struct PeerRelayServer {
    port: u16,
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl Drop for PeerRelayServer {
    fn drop(&mut self) {
        self.task.abort();
        for (_, t) in lock(&self.inner.sessions).drain() {
            t.abort();
        }
    }
}

/// At most [`OPENS_PER_SEC`] sealed messages opened per second.
struct OpenBudget {
    window: Instant,
    used: u32,
}

impl OpenBudget {
    fn new() -> OpenBudget {
        OpenBudget {
            window: Instant::now(),
            used: 0,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.used = 0;
        }
        self.used += 1;
        self.used <= OPENS_PER_SEC
    }
}

impl PeerRelayServer {
    /// Listens for allocations on UDP `port` (dual-stack) with up to `sessions` sessions on
    /// the ports above it, as the node with key `key`; `allowed` says which nodes may use it.
    pub async fn start(
        port: u16,
        sessions: u16,
        key: StaticSecret,
        allowed: Allowed,
    ) -> io::Result<PeerRelayServer> {
        Self::start_with_idle(port, sessions, key, allowed, SESSION_IDLE).await
    }

    /// [`PeerRelayServer::start`] with another idle timeout (tests).
    pub async fn start_with_idle(
        port: u16,
        sessions: u16,
        key: StaticSecret,
        allowed: Allowed,
        idle: Duration,
    ) -> io::Result<PeerRelayServer> {
        let sock = WgSocket::bind(port, false).await?;
        let port = sock.local_port()?;
        let inner = Arc::new(Inner {
            key: RwLock::new(key),
            allowed,
            allocations: Mutex::new(Allocations::new(port, sessions)),
            sessions: Mutex::new(HashMap::new()),
            counters: PeerRelayCounters::default(),
            idle,
        });
        let task = tokio::spawn(serve_allocations(inner.clone(), sock));
        log::info!("peer relay listening on UDP port {port} ({sessions} sessions above it)");
        Ok(PeerRelayServer { port, inner, task })
    }

    /// The allocation port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Uses a new node key (rotation).
    pub fn set_key(&self, key: StaticSecret) {
        *self.inner.key.write().expect("peer relay key lock") = key;
    }

    /// The counters.
    pub fn counters(&self) -> &PeerRelayCounters {
        &self.inner.counters
    }

    /// Port, open sessions and counters.
    pub fn status(&self) -> PeerRelayStatus {
        let c = &self.inner.counters;
        PeerRelayStatus {
            port: self.port,
            sessions: lock(&self.inner.allocations).len(),
            allocations: c.allocations.load(Relaxed),
            binds: c.binds.load(Relaxed),
            forwarded_packets: c.forwarded_packets.load(Relaxed),
            forwarded_bytes: c.forwarded_bytes.load(Relaxed),
            dropped: c.dropped_unbound.load(Relaxed)
                + c.dropped_junk.load(Relaxed)
                + c.refused.load(Relaxed),
        }
    }
}

impl Inner {
    fn open(&self, datagram: &[u8]) -> Option<(NodeKey, Message)> {
        let key = self.key.read().expect("peer relay key lock");
        disco::open(&key, datagram).ok()
    }

    async fn reply(&self, sock: &WgSocket, to_key: &NodeKey, to: SocketAddr, msg: &Message) {
        let sealed = {
            let key = self.key.read().expect("peer relay key lock");
            disco::seal(&key, to_key, msg)
        };
        if let Ok(bytes) = sealed {
            if let Err(e) = sock.send_to(&bytes, to).await {
                log::debug!("peer relay reply to {to}: {e}");
            }
        }
    }
}

/// The allocation port: answers `RelayAllocate` from tailnet nodes with the pair's session.
async fn serve_allocations(inner: Arc<Inner>, sock: WgSocket) {
    let mut buf = vec![0u8; 2048];
    let mut budget = OpenBudget::new();
    let c = &inner.counters;
    loop {
        let (n, src) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                log::warn!("peer relay: allocation socket: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let d = &buf[..n];
        if !disco::is_disco(d) || !budget.take(Instant::now()) {
            c.dropped_junk.fetch_add(1, Relaxed);
            continue;
        }
        let Some((sender, Message::RelayAllocate { peer })) = inner.open(d) else {
            c.dropped_junk.fetch_add(1, Relaxed);
            continue;
        };
        if !(inner.allowed)(&sender) || !(inner.allowed)(&peer) {
            c.refused.fetch_add(1, Relaxed);
            continue;
        }
        let Some(port) = session_for(&inner, sender, peer).await else {
            c.refused.fetch_add(1, Relaxed);
            continue;
        };
        inner
            .reply(&sock, &sender, src, &Message::RelayAllocated { peer, port })
            .await;
    }
}

/// The session port of the pair, opening the session if it is new.
async fn session_for(inner: &Arc<Inner>, a: NodeKey, b: NodeKey) -> Option<u16> {
    let allocated = lock(&inner.allocations).allocate(a, b, |p| {
        std::net::UdpSocket::bind((std::net::Ipv6Addr::UNSPECIFIED, p)).is_ok()
            || std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, p)).is_ok()
    });
    let (port, new) = match allocated {
        Ok(r) => r,
        Err(e) => {
            log::debug!("peer relay: allocation refused: {e}");
            return None;
        }
    };
    if !new {
        return Some(port);
    }
    let sock = match WgSocket::bind(port, false).await {
        Ok(s) => s,
        Err(e) => {
            log::warn!("peer relay: session port {port}: {e}");
            lock(&inner.allocations).release(port);
            return None;
        }
    };
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let session = Session::new(port, (a, b), secret);
    inner.counters.allocations.fetch_add(1, Relaxed);
    let task = tokio::spawn(serve_session(inner.clone(), sock, port, session));
    lock(&inner.sessions).insert(port, task);
    Some(port)
}

/// One session's port: binds its two nodes, then forwards between them until idle.
async fn serve_session(inner: Arc<Inner>, sock: WgSocket, port: u16, mut session: Session) {
    let mut buf = vec![0u8; 65536];
    let mut budget = OpenBudget::new();
    let c = &inner.counters;
    loop {
        let (n, src) = match tokio::time::timeout(inner.idle, sock.recv_from(&mut buf)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                log::warn!("peer relay: session port {port}: {e}");
                break;
            }
            Err(_) => break,
        };
        let d = &buf[..n];
        match session.forward(src) {
            Ok(to) => {
                if sock.send_to(d, to).await.is_ok() {
                    c.forwarded_packets.fetch_add(1, Relaxed);
                    c.forwarded_bytes.fetch_add(n as u64, Relaxed);
                }
            }
            Err(true) => {
                c.dropped_unbound.fetch_add(1, Relaxed);
            }
            Err(false) => {
                if !disco::is_disco(d) || !budget.take(Instant::now()) {
                    c.dropped_junk.fetch_add(1, Relaxed);
                    continue;
                }
                let Some((sender, Message::RelayBind { cookie })) = inner.open(d) else {
                    c.dropped_junk.fetch_add(1, Relaxed);
                    continue;
                };
                let answer = match session.bind(&sender, src, cookie) {
                    BindOutcome::Challenge(cookie) => Message::RelayChallenge { cookie },
                    BindOutcome::Bound => {
                        c.binds.fetch_add(1, Relaxed);
                        log::debug!("peer relay: session {port}: bound {src}");
                        Message::RelayBound
                    }
                    BindOutcome::NotMember => {
                        c.refused.fetch_add(1, Relaxed);
                        continue;
                    }
                };
                inner.reply(&sock, &sender, src, &answer).await;
            }
        }
    }
    lock(&inner.allocations).release(port);
    lock(&inner.sessions).remove(&port);
    log::debug!("peer relay: session {port} closed");
}
