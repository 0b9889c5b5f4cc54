//! The relay server: clients connect over TLS (or plain HTTP behind a TLS-terminating proxy),
//! prove their node key (see [`super::auth`]) and send packets addressed to other node keys;
//! the server hands each packet to the destination's connection, or, when the destination is
//! connected to another server of the region, over the mesh link to that server. It never
//! sees plaintext: the packets are WireGuard datagrams, already encrypted end to end.
//!
//! Per client: a bounded send queue (a slow receiver loses packets, counted, instead of
//! stalling everyone) and an optional token bucket that paces how fast it may send.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio_rustls::TlsAcceptor;
use x25519_dalek::{PublicKey, StaticSecret};

use super::auth::{self, ServerInfo, PROTOCOL_VERSION};
use super::conn::{read_frame, spawn_writer, BoxStream, ReadError};
use super::frame::{Frame, GoneReason, NodeKey, CHALLENGE_LEN};
use super::http::{self, Route};
use super::ratelimit::TokenBucket;
use crate::wg::Key;

/// How long a new connection may take for TLS, the HTTP request and the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an idle connection gets a keep-alive frame.
pub const KEEP_ALIVE: Duration = Duration::from_secs(60);
/// Frames queued per connection before packets to it are dropped.
pub const DEFAULT_QUEUE_DEPTH: usize = 1024;
/// At most one "not here" notice per destination per this interval on one connection.
const NOT_HERE_INTERVAL: Duration = Duration::from_secs(1);

/// How a relay server behaves.
pub struct ServerOptions {
    /// The server's private key (its public half identifies it in the relay map).
    pub private_key: StaticSecret,
    /// The region's mesh secret; servers presenting it may watch connections and forward.
    pub mesh_key: Option<String>,
    /// Sustained bytes per second and burst accepted from each client (`None`: no limit).
    pub rate_limit: Option<(u64, u64)>,
    /// Frames queued per connection before packets to it are dropped.
    pub queue_depth: usize,
}

/// Counters of a relay server (all monotonic except the gauges read from its tables).
#[derive(Debug, Default)]
pub struct Counters {
    /// TCP connections accepted.
    pub accepted: AtomicU64,
    /// HTTP requests answered without an upgrade (probes, index, errors).
    pub http_requests: AtomicU64,
    /// Connections that failed TLS, HTTP or the handshake.
    pub handshake_failures: AtomicU64,
    /// Packets handed to a local client.
    pub packets_relayed: AtomicU64,
    /// Bytes of those packets.
    pub bytes_relayed: AtomicU64,
    /// Packets sent to another server of the region.
    pub packets_to_mesh: AtomicU64,
    /// Packets received from another server of the region and delivered here.
    pub packets_from_mesh: AtomicU64,
    /// Packets dropped: the destination is connected nowhere in the region.
    pub dropped_unknown_dest: AtomicU64,
    /// Packets dropped: the destination's queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Forwarded packets from a connection that is not a mesh server (dropped).
    pub dropped_not_mesh: AtomicU64,
    /// Times a client was paced by its rate limit.
    pub rate_limited: AtomicU64,
    /// Frames of unknown type, or of a type a client may not send (ignored).
    pub unexpected_frames: AtomicU64,
    /// Connections closed because of a malformed frame.
    pub protocol_errors: AtomicU64,
}

/// A snapshot of the counters and gauges, for status and metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Snapshot {
    /// Clients connected now.
    pub clients: u64,
    /// Keys reachable through other servers of the region now.
    pub mesh_keys: u64,
    /// Mesh servers watching this one now.
    pub watchers: u64,
    /// See [`Counters`].
    pub accepted: u64,
    /// See [`Counters`].
    pub http_requests: u64,
    /// See [`Counters`].
    pub handshake_failures: u64,
    /// See [`Counters`].
    pub packets_relayed: u64,
    /// See [`Counters`].
    pub bytes_relayed: u64,
    /// See [`Counters`].
    pub packets_to_mesh: u64,
    /// See [`Counters`].
    pub packets_from_mesh: u64,
    /// See [`Counters`].
    pub dropped_unknown_dest: u64,
    /// See [`Counters`].
    pub dropped_queue_full: u64,
    /// See [`Counters`].
    pub dropped_not_mesh: u64,
    /// See [`Counters`].
    pub rate_limited: u64,
    /// See [`Counters`].
    pub unexpected_frames: u64,
    /// See [`Counters`].
    pub protocol_errors: u64,
}

/// A connected client as the tables see it.
struct ClientHandle {
    conn_id: u64,
    tx: mpsc::Sender<Frame>,
    /// Tells the connection to close (a newer connection took its key).
    closer: Arc<Notify>,
}

/// A key reachable through a mesh link.
#[derive(Clone)]
struct MeshRoute {
    link_id: u64,
    tx: mpsc::Sender<Frame>,
}

struct Shared {
    private_key: StaticSecret,
    public_key: NodeKey,
    opts_mesh_key: Option<String>,
    rate_limit: Option<(u64, u64)>,
    queue_depth: usize,
    clients: RwLock<HashMap<NodeKey, ClientHandle>>,
    mesh_routes: RwLock<HashMap<NodeKey, MeshRoute>>,
    watchers: Mutex<HashMap<u64, mpsc::Sender<Frame>>>,
    next_id: AtomicU64,
    counters: Counters,
}

/// A relay server; cheap to clone (all clones are the same server).
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl Server {
    /// A server with no clients yet.
    pub fn new(opts: ServerOptions) -> Server {
        let public_key = PublicKey::from(&opts.private_key).to_bytes();
        Server {
            shared: Arc::new(Shared {
                private_key: opts.private_key,
                public_key,
                opts_mesh_key: opts.mesh_key,
                rate_limit: opts.rate_limit,
                queue_depth: opts.queue_depth.max(1),
                clients: RwLock::new(HashMap::new()),
                mesh_routes: RwLock::new(HashMap::new()),
                watchers: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                counters: Counters::default(),
            }),
        }
    }

    /// The server's public key.
    pub fn public_key(&self) -> Key {
        Key::from_bytes(self.shared.public_key)
    }

    /// The server's private key (mesh links log in to other servers with it).
    pub fn private_key(&self) -> &StaticSecret {
        &self.shared.private_key
    }

    /// The region's mesh secret, if any.
    pub fn mesh_key(&self) -> Option<&str> {
        self.shared.opts_mesh_key.as_deref()
    }

    /// The current counters and gauges.
    pub fn snapshot(&self) -> Snapshot {
        let c = &self.shared.counters;
        Snapshot {
            clients: self.shared.clients.read().expect("clients lock").len() as u64,
            mesh_keys: self.shared.mesh_routes.read().expect("mesh lock").len() as u64,
            watchers: self.shared.watchers.lock().expect("watchers lock").len() as u64,
            accepted: c.accepted.load(Relaxed),
            http_requests: c.http_requests.load(Relaxed),
            handshake_failures: c.handshake_failures.load(Relaxed),
            packets_relayed: c.packets_relayed.load(Relaxed),
            bytes_relayed: c.bytes_relayed.load(Relaxed),
            packets_to_mesh: c.packets_to_mesh.load(Relaxed),
            packets_from_mesh: c.packets_from_mesh.load(Relaxed),
            dropped_unknown_dest: c.dropped_unknown_dest.load(Relaxed),
            dropped_queue_full: c.dropped_queue_full.load(Relaxed),
            dropped_not_mesh: c.dropped_not_mesh.load(Relaxed),
            rate_limited: c.rate_limited.load(Relaxed),
            unexpected_frames: c.unexpected_frames.load(Relaxed),
            protocol_errors: c.protocol_errors.load(Relaxed),
        }
    }

    /// Accepts connections on `listener` until the task is dropped; with `tls`, each is a TLS
    /// connection first.
    pub async fn serve(self, listener: TcpListener, tls: Option<TlsAcceptor>) {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("relay listener: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            self.shared.counters.accepted.fetch_add(1, Relaxed);
            let _ = tcp.set_nodelay(true);
            let server = self.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let stream: BoxStream = match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => Box::pin(s),
                            Ok(Err(e)) => {
                                server.handshake_failed(peer, &format!("TLS: {e}"));
                                return;
                            }
                            Err(_) => {
                                server.handshake_failed(peer, "TLS: timed out");
                                return;
                            }
                        }
                    }
                    None => Box::pin(tcp),
                };
                server.serve_conn(stream, peer).await;
            });
        }
    }

    fn handshake_failed(&self, peer: SocketAddr, why: &str) {
        self.shared
            .counters
            .handshake_failures
            .fetch_add(1, Relaxed);
        log::debug!("relay connection from {peer}: {why}");
    }

    /// Serves one accepted connection (after TLS): the HTTP request, then, for an upgrade,
    /// the handshake and the client's frames until it disconnects.
    pub async fn serve_conn(&self, stream: BoxStream, peer: SocketAddr) {
        let (read_half, mut write_half) = tokio::io::split(stream);
        let mut reader = BufReader::new(read_half);
        let head = match tokio::time::timeout(HANDSHAKE_TIMEOUT, http::read_head(&mut reader)).await
        {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => return self.handshake_failed(peer, &format!("HTTP: {e}")),
            Err(_) => return self.handshake_failed(peer, "HTTP: timed out"),
        };
        let reply = match http::route(&head) {
            Ok(Route::Relay) => None,
            Ok(Route::Probe) => Some(http::plain_response(200, "")),
            Ok(Route::Index) => Some(http::plain_response(
                200,
                "tailgate relay\nThis server relays encrypted tailnet packets.\n",
            )),
            Err(code) => Some(http::plain_response(code, "")),
        };
        if let Some(reply) = reply {
            self.shared.counters.http_requests.fetch_add(1, Relaxed);
            let _ = write_half.write_all(reply.as_bytes()).await;
            let _ = write_half.shutdown().await;
            return;
        }
        let mut challenge = [0u8; CHALLENGE_LEN];
        OsRng.fill_bytes(&mut challenge);
        let mut greeting = http::upgrade_response().as_bytes().to_vec();
        Frame::ServerKey {
            key: self.shared.public_key,
            challenge,
        }
        .encode(&mut greeting);
        if write_half.write_all(&greeting).await.is_err() || write_half.flush().await.is_err() {
            return self.handshake_failed(peer, "write failed");
        }
        let mut buf = Vec::new();
        let (client_key, info) = match tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            read_frame(&mut reader, &mut buf),
        )
        .await
        {
            Ok(Ok(Frame::ClientInfo { key, nonce, sealed })) => {
                match auth::open_client_info(
                    &self.shared.private_key,
                    &key,
                    &challenge,
                    &nonce,
                    &sealed,
                ) {
                    Ok(info) => (key, info),
                    Err(e) => return self.handshake_failed(peer, &format!("client info: {e}")),
                }
            }
            Ok(Ok(other)) => {
                return self.handshake_failed(peer, &format!("expected client info, got {other:?}"))
            }
            Ok(Err(e)) => return self.handshake_failed(peer, &format!("client info: {e}")),
            Err(_) => return self.handshake_failed(peer, "client info: timed out"),
        };
        let is_mesh = match (&info.mesh_key, &self.shared.opts_mesh_key) {
            (None, _) => false,
            (Some(theirs), Some(ours)) if constant_time_eq(theirs, ours) => true,
            (Some(_), _) => return self.handshake_failed(peer, "wrong mesh key"),
        };
        let (limit_rate, limit_burst) = self.shared.rate_limit.unwrap_or((0, 0));
        let server_info = ServerInfo {
            version: PROTOCOL_VERSION,
            rate_limit_bytes_per_sec: if is_mesh { 0 } else { limit_rate },
            rate_limit_burst_bytes: if is_mesh { 0 } else { limit_burst },
        };
        let Ok((nonce, sealed)) = auth::seal_server_info(
            &self.shared.private_key,
            &client_key,
            &challenge,
            &server_info,
        ) else {
            return self.handshake_failed(peer, "sealing server info");
        };
        let mut hello = Vec::new();
        Frame::ServerInfo { nonce, sealed }.encode(&mut hello);
        if write_half.write_all(&hello).await.is_err() || write_half.flush().await.is_err() {
            return self.handshake_failed(peer, "write failed");
        }

        let conn_id = self.shared.next_id.fetch_add(1, Relaxed);
        let (tx, rx) = mpsc::channel(self.shared.queue_depth);
        let writer = spawn_writer(write_half, rx, Some(KEEP_ALIVE));
        let closer = Arc::new(Notify::new());
        if !is_mesh {
            self.register(client_key, conn_id, tx.clone(), closer.clone());
        }
        log::debug!(
            "relay: {} connected from {peer}{}",
            Key::from_bytes(client_key).to_base64(),
            if is_mesh { " (mesh)" } else { "" }
        );
        let pacing = (!is_mesh && limit_rate > 0)
            .then(|| TokenBucket::new(limit_rate, limit_burst, Instant::now()));
        let conn = ClientConn {
            server: self,
            key: client_key,
            conn_id,
            is_mesh,
            tx,
            pacing,
            not_here: HashMap::new(),
        };
        tokio::select! {
            end = conn.run(&mut reader, &mut buf) => {
                if let Err(e) = end {
                    log::debug!("relay: connection from {peer} ended: {e}");
                }
            }
            _ = closer.notified() => log::debug!("relay: connection from {peer} replaced"),
        }
        self.unregister(client_key, conn_id, is_mesh);
        writer.abort();
    }

    fn register(&self, key: NodeKey, conn_id: u64, tx: mpsc::Sender<Frame>, closer: Arc<Notify>) {
        let old = self.shared.clients.write().expect("clients lock").insert(
            key,
            ClientHandle {
                conn_id,
                tx,
                closer,
            },
        );
        if let Some(old) = old {
            old.closer.notify_one();
        }
        self.tell_watchers(Frame::PeerPresent(key));
    }

    fn unregister(&self, key: NodeKey, conn_id: u64, is_mesh: bool) {
        if is_mesh {
            self.shared
                .watchers
                .lock()
                .expect("watchers lock")
                .remove(&conn_id);
            return;
        }
        let removed = {
            let mut clients = self.shared.clients.write().expect("clients lock");
            match clients.get(&key) {
                Some(h) if h.conn_id == conn_id => clients.remove(&key).is_some(),
                _ => false,
            }
        };
        if removed {
            self.tell_watchers(Frame::PeerGone {
                key,
                reason: GoneReason::Disconnected,
            });
        }
    }

    fn tell_watchers(&self, frame: Frame) {
        let watchers = self.shared.watchers.lock().expect("watchers lock");
        for tx in watchers.values() {
            // A watcher that cannot keep up misses a notice; its link re-syncs on reconnect.
            let _ = tx.try_send(frame.clone());
        }
    }

    /// Delivers `packet` from `src` to the local client `dst`, or gives it back if `dst` is
    /// not connected here.
    fn deliver_local(&self, src: NodeKey, dst: &NodeKey, packet: Vec<u8>) -> Result<(), Vec<u8>> {
        let clients = self.shared.clients.read().expect("clients lock");
        let Some(h) = clients.get(dst) else {
            return Err(packet);
        };
        let c = &self.shared.counters;
        let len = packet.len() as u64;
        match h.tx.try_send(Frame::RecvPacket { src, packet }) {
            Ok(()) => {
                c.packets_relayed.fetch_add(1, Relaxed);
                c.bytes_relayed.fetch_add(len, Relaxed);
            }
            Err(_) => {
                c.dropped_queue_full.fetch_add(1, Relaxed);
            }
        }
        Ok(())
    }

    /// Forwards `packet` to the mesh server that has `dst`; false if none has it.
    fn deliver_mesh(&self, src: NodeKey, dst: NodeKey, packet: Vec<u8>) -> bool {
        let route = self
            .shared
            .mesh_routes
            .read()
            .expect("mesh lock")
            .get(&dst)
            .cloned();
        let Some(route) = route else {
            return false;
        };
        let c = &self.shared.counters;
        match route.tx.try_send(Frame::ForwardPacket { src, dst, packet }) {
            Ok(()) => c.packets_to_mesh.fetch_add(1, Relaxed),
            Err(_) => c.dropped_queue_full.fetch_add(1, Relaxed),
        };
        true
    }

    /// Records that `key` is reachable over the mesh link `link_id` (whose frames go to `tx`).
    pub(super) fn add_mesh_route(&self, key: NodeKey, link_id: u64, tx: mpsc::Sender<Frame>) {
        self.shared
            .mesh_routes
            .write()
            .expect("mesh lock")
            .insert(key, MeshRoute { link_id, tx });
    }

    /// Forgets `key` if it was reachable over `link_id`.
    pub(super) fn remove_mesh_route(&self, key: &NodeKey, link_id: u64) {
        let mut routes = self.shared.mesh_routes.write().expect("mesh lock");
        if routes.get(key).is_some_and(|r| r.link_id == link_id) {
            routes.remove(key);
        }
    }

    /// Forgets every key of the mesh link `link_id` (it went down).
    pub(super) fn remove_mesh_link(&self, link_id: u64) {
        self.shared
            .mesh_routes
            .write()
            .expect("mesh lock")
            .retain(|_, r| r.link_id != link_id);
    }

    /// A fresh identifier for a mesh link.
    pub(super) fn next_link_id(&self) -> u64 {
        self.shared.next_id.fetch_add(1, Relaxed)
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The reading side of one authenticated connection.
struct ClientConn<'a> {
    server: &'a Server,
    key: NodeKey,
    conn_id: u64,
    is_mesh: bool,
    tx: mpsc::Sender<Frame>,
    pacing: Option<TokenBucket>,
    not_here: HashMap<NodeKey, Instant>,
}

impl ClientConn<'_> {
    async fn run<R: tokio::io::AsyncRead + Unpin>(
        mut self,
        reader: &mut R,
        buf: &mut Vec<u8>,
    ) -> Result<(), ReadError> {
        let counters = &self.server.shared.counters;
        loop {
            let frame = match read_frame(reader, buf).await {
                Ok(f) => f,
                Err(ReadError::Frame(e)) => {
                    counters.protocol_errors.fetch_add(1, Relaxed);
                    return Err(ReadError::Frame(e));
                }
                Err(e) => return Err(e),
            };
            match frame {
                Frame::SendPacket { dst, packet } => {
                    if let Some(bucket) = self.pacing.as_mut() {
                        let wait = bucket.take(packet.len(), Instant::now());
                        if !wait.is_zero() {
                            counters.rate_limited.fetch_add(1, Relaxed);
                            tokio::time::sleep(wait).await;
                        }
                    }
                    self.send(dst, packet);
                }
                Frame::ForwardPacket { src, dst, packet } if self.is_mesh => {
                    if self.server.deliver_local(src, &dst, packet).is_ok() {
                        counters.packets_from_mesh.fetch_add(1, Relaxed);
                    } else {
                        counters.dropped_unknown_dest.fetch_add(1, Relaxed);
                    }
                }
                Frame::ForwardPacket { .. } => {
                    counters.dropped_not_mesh.fetch_add(1, Relaxed);
                }
                Frame::WatchConns if self.is_mesh => self.watch().await,
                Frame::Ping(data) => {
                    let _ = self.tx.try_send(Frame::Pong(data));
                }
                Frame::KeepAlive | Frame::Pong(_) | Frame::NotePreferred(_) => {}
                _ => {
                    counters.unexpected_frames.fetch_add(1, Relaxed);
                }
            }
        }
    }

    fn send(&mut self, dst: NodeKey, packet: Vec<u8>) {
        let Err(packet) = self.server.deliver_local(self.key, &dst, packet) else {
            return;
        };
        if self.server.deliver_mesh(self.key, dst, packet) {
            return;
        }
        self.server
            .shared
            .counters
            .dropped_unknown_dest
            .fetch_add(1, Relaxed);
        let now = Instant::now();
        let due = self
            .not_here
            .get(&dst)
            .is_none_or(|t| now.duration_since(*t) >= NOT_HERE_INTERVAL);
        if due {
            if self.not_here.len() > 1024 {
                self.not_here.clear();
            }
            self.not_here.insert(dst, now);
            let _ = self.tx.try_send(Frame::PeerGone {
                key: dst,
                reason: GoneReason::NotHere,
            });
        }
    }

    /// Makes this mesh connection a watcher: every client connected now, then every change.
    async fn watch(&self) {
        let present: Vec<NodeKey> = {
            let mut watchers = self.server.shared.watchers.lock().expect("watchers lock");
            let clients = self.server.shared.clients.read().expect("clients lock");
            watchers.insert(self.conn_id, self.tx.clone());
            clients.keys().copied().collect()
        };
        for key in present {
            if self.tx.send(Frame::PeerPresent(key)).await.is_err() {
                return;
            }
        }
    }
}
