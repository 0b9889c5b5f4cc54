//! The peer relay's sockets: the allocation port, and one socket per session that binds the
//! two nodes and then forwards between them.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use x25519_dalek::StaticSecret;

use super::table::{Allocations, BindOutcome, NodeKey, Session, COOKIE_EPOCH_SECS};
use crate::device::lock;
use crate::io::mmsg::DatagramBatch;
use crate::io::udp::WgSocket;
use crate::traversal::disco::{self, Message};

/// A session that forwarded nothing for this long is closed and its port freed.
pub const SESSION_IDLE: Duration = Duration::from_secs(120);
/// A session whose two nodes are not both bound this long after it opened (or after it last
/// forwarded) is closed: the other node is offline or cannot reach the relay.
pub const UNBOUND_TIMEOUT: Duration = Duration::from_secs(30);
/// Datagrams (or GRO runs) a session reads (`recvmmsg`) and sends on (`sendmmsg`) per
/// system call.
const SESSION_BATCH: usize = 32;
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
    /// Datagrams that could not be sent on (socket errors).
    pub send_errors: AtomicU64,
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
    /// Datagrams dropped (partner unbound, junk, send errors) or refused (allocations and
    /// binds by nodes outside the tailnet or the session, or when every port is in use).
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
    /// Set when the server is dropped: no new session starts.
    closed: AtomicBool,
}

/// A running peer relay; dropping it stops its tasks, which close their sockets.
pub struct PeerRelayServer {
    port: u16,
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl Drop for PeerRelayServer {
    fn drop(&mut self) {
        self.inner.closed.store(true, Relaxed);
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
            closed: AtomicBool::new(false),
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
                + c.send_errors.load(Relaxed)
                + c.refused.load(Relaxed),
        }
    }
}

impl Inner {
    /// Opens a sealed message whose (cleartext) sender passes `wanted`, within `budget`,
    /// counting what it drops: strangers are refused without costing a key agreement.
    fn open_from(
        &self,
        datagram: &[u8],
        budget: &mut OpenBudget,
        wanted: impl Fn(&NodeKey) -> bool,
    ) -> Option<(NodeKey, Message)> {
        let c = &self.counters;
        let Ok(sender) = disco::sender(datagram) else {
            c.dropped_junk.fetch_add(1, Relaxed);
            return None;
        };
        if !wanted(&sender) {
            c.refused.fetch_add(1, Relaxed);
            return None;
        }
        let opened = if budget.take(Instant::now()) {
            self.open(datagram)
        } else {
            None
        };
        if opened.is_none() {
            c.dropped_junk.fetch_add(1, Relaxed);
        }
        opened
    }

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
        let opened = inner.open_from(&buf[..n], &mut budget, |k| (inner.allowed)(k));
        let Some((sender, msg)) = opened else {
            continue;
        };
        let Message::RelayAllocate { peer } = msg else {
            c.dropped_junk.fetch_add(1, Relaxed);
            continue;
        };
        if !(inner.allowed)(&peer) {
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
    // UDP GRO/GSO: a burst of one node's datagrams is read and sent on as one run.
    let sock = match WgSocket::bind(port, true).await {
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
    let mut sessions = lock(&inner.sessions);
    if inner.closed.load(Relaxed) {
        drop(sessions);
        lock(&inner.allocations).release(port);
        return None;
    }
    inner.counters.allocations.fetch_add(1, Relaxed);
    let task = tokio::spawn(serve_session(inner.clone(), sock, port, session));
    sessions.insert(port, task);
    Some(port)
}

/// The cookie epoch now (see [`COOKIE_EPOCH_SECS`]).
fn cookie_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / COOKIE_EPOCH_SECS)
        .unwrap_or(0)
}

/// One session's port: binds its two nodes, then forwards between them; closes when it has
/// forwarded nothing for the idle time, or when its nodes are not both bound within
/// [`UNBOUND_TIMEOUT`]. Junk never keeps it open.
async fn serve_session(inner: Arc<Inner>, sock: WgSocket, port: u16, mut session: Session) {
    let mut batch = DatagramBatch::new(SESSION_BATCH);
    let mut targets = Vec::with_capacity(SESSION_BATCH);
    let mut budget = OpenBudget::new();
    let c = &inner.counters;
    let mut active = Instant::now();
    loop {
        let limit = if session.is_complete() {
            inner.idle
        } else {
            UNBOUND_TIMEOUT.min(inner.idle)
        };
        let left = limit.saturating_sub(active.elapsed());
        let received = tokio::time::timeout(left, sock.recv_batch(&mut batch)).await;
        let n = match received {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                log::warn!("peer relay: session port {port}: {e}");
                break;
            }
            Err(_) => break,
        };
        targets.clear();
        for i in 0..n {
            let Some((run, src)) = batch.get(i) else {
                c.dropped_junk.fetch_add(batch.datagrams(i) as u64, Relaxed);
                continue;
            };
            match session.forward(src) {
                Ok(to) => targets.push((i, to)),
                Err(true) => {
                    c.dropped_unbound
                        .fetch_add(batch.datagrams(i) as u64, Relaxed);
                }
                Err(false) => {
                    let datagram_len = batch.segment(i).unwrap_or(run.len()).max(1);
                    for d in run.chunks(datagram_len) {
                        if bind_step(&inner, &sock, port, &mut session, &mut budget, d, src).await {
                            active = Instant::now();
                        }
                    }
                }
            }
        }
        if targets.is_empty() {
            continue;
        }
        let sent = sock.send_batch(&batch, &targets).await.unwrap_or(0);
        let (done, failed) = targets.split_at(sent);
        if !done.is_empty() {
            active = Instant::now();
            let bytes: usize = done.iter().map(|(i, _)| batch.slot(*i).len()).sum();
            let packets: usize = done.iter().map(|(i, _)| batch.datagrams(*i)).sum();
            c.forwarded_packets.fetch_add(packets as u64, Relaxed);
            c.forwarded_bytes.fetch_add(bytes as u64, Relaxed);
        }
        let lost: usize = failed.iter().map(|(i, _)| batch.datagrams(*i)).sum();
        c.send_errors.fetch_add(lost as u64, Relaxed);
    }
    lock(&inner.sessions).remove(&port);
    drop(sock);
    lock(&inner.allocations).release(port);
    log::debug!("peer relay: session {port} closed");
}

/// Answers one datagram from an address the session does not forward for: a sealed
/// `RelayBind` from a member gets a challenge or binds; anything else is a counted drop.
/// Returns whether this bind completed the session.
async fn bind_step(
    inner: &Inner,
    sock: &WgSocket,
    port: u16,
    session: &mut Session,
    budget: &mut OpenBudget,
    datagram: &[u8],
    src: SocketAddr,
) -> bool {
    let c = &inner.counters;
    let opened = inner.open_from(datagram, budget, |k| session.is_member(k));
    let Some((sender, msg)) = opened else {
        return false;
    };
    let Message::RelayBind { cookie } = msg else {
        c.dropped_junk.fetch_add(1, Relaxed);
        return false;
    };
    let was_complete = session.is_complete();
    let (answer, completed) = match session.bind(&sender, src, cookie, cookie_epoch()) {
        BindOutcome::Challenge(cookie) => (Message::RelayChallenge { cookie }, false),
        BindOutcome::Bound => {
            c.binds.fetch_add(1, Relaxed);
            log::debug!("peer relay: session {port}: bound {src}");
            (Message::RelayBound, !was_complete && session.is_complete())
        }
        BindOutcome::NotMember => {
            c.refused.fetch_add(1, Relaxed);
            return false;
        }
    };
    inner.reply(sock, &sender, src, &answer).await;
    completed
}
