//! The node side of the control protocol, for the daemon (`tailgate up`).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use tailgate::control::client::{ClientEvent, ClientOptions, ControlClient};
//! use tailgate::control::proto::Hostinfo;
//! let opts = ClientOptions::new(
//!     "tg://ctl.example:7443#<server key>".parse()?,
//!     "/var/lib/tailgate".into(),
//!     Hostinfo { hostname: "router-a".into(), ..Hostinfo::default() },
//! );
//! let mut client = ControlClient::new(opts)?;       // loads or creates keys in the state dir
//! let wg_private = client.node_private_key();      // the WireGuard key to run the device with
//! client.register(Some("tgkey-…")).await?;         // once (`tailgate up --auth-key`)
//! let (handle, mut events) = client.start();       // background session, reconnects itself
//! handle.set_endpoints(vec!["192.0.2.1:41641".parse()?]);
//! while let Some(ev) = events.recv().await {
//!     match ev {
//!         ClientEvent::NetMap(nm) => { /* apply peers, routes, DNS */ }
//!         ClientEvent::NeedsLogin(why) => { eprintln!("{why}"); break }
//!         _ => {}
//!     }
//! }
//! handle.shutdown().await;
//! # let _ = wg_private; Ok(()) }
//! ```
//!
//! The session loop reconnects with exponential backoff (with ±20 % jitter, capped at
//! [`ClientOptions::backoff_max`]) after any failure, so a server outage only delays netmap
//! updates: the caller keeps its data plane running on the last netmap meanwhile. The latest
//! endpoints, health and hostinfo set through [`ControlHandle`] are sent again on every
//! reconnect. A refusal that only a human can fix (unknown/used/expired auth key, node deleted
//! or expired by an admin) ends the loop with [`ClientEvent::NeedsLogin`]; if the client was
//! given an auth key it first tries to register again with it.
//!
//! State (machine key, WireGuard key, server pin, registration) lives in
//! [`NodeState`], written atomically.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use super::login_url::LoginServer;
use super::node_state::NodeState;
use super::proto::{
    decode_server_message, ClientMessage, ErrorCode, Health, Hostinfo, NetMap, NodeUpdate, Refusal,
    RefusalCode, RegisterRequest, RegisterResponse, Registration, ServerError, ServerMessage,
};
use super::transport::{client_handshake, fetch_server_key, Connection, TransportError};
use crate::wg::Key;

/// How long a TCP connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the answer to a registration.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The keepalive interval assumed until the server states its own.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(5);

/// How to reach and talk to the server.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The server (`tg://host:port#key`; without a key the key is pinned on first use).
    pub login_server: LoginServer,
    /// Where [`NodeState`] lives.
    pub state_dir: PathBuf,
    /// What the node tells the server about itself.
    pub hostinfo: Hostinfo,
    /// Used by the session loop to register (again) when needed.
    pub auth_key: Option<String>,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
}

impl ClientOptions {
    /// Options with default backoff (100 ms doubling up to 10 s) and no auth key.
    pub fn new(login_server: LoginServer, state_dir: PathBuf, hostinfo: Hostinfo) -> Self {
        ClientOptions {
            login_server,
            state_dir,
            hostinfo,
            auth_key: None,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the registration.
    #[error("registration refused: {0}")]
    Refused(Refusal),
    /// The server ended the session with an error.
    #[error("the control server ended the session: {0}")]
    Server(ServerError),
    /// TCP connect failed.
    #[error("cannot reach the control server at {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Transport failure (handshake, framing, closed connection).
    #[error("control connection: {0}")]
    Transport(#[from] TransportError),
    /// The URL's key differs from the key pinned in the state.
    #[error("the login URL's server key {url} differs from the key pinned in {state_dir} ({pinned}); remove the state to trust the new server")]
    KeyMismatch {
        /// Key from the URL.
        url: String,
        /// Pinned key.
        pinned: String,
        /// State dir.
        state_dir: String,
    },
    /// Reading or writing the node state failed.
    #[error("node state: {0:#}")]
    State(anyhow::Error),
    /// The server sent something unexpected.
    #[error("unexpected answer from the control server: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// Only a human (a new auth key, an admin) can fix this; retrying will not help.
    pub fn needs_login(&self) -> bool {
        match self {
            ClientError::Refused(r) => matches!(
                r.code,
                RefusalCode::AuthKeyUsed
                    | RefusalCode::AuthKeyExpired
                    | RefusalCode::UnknownAuthKey
                    | RefusalCode::AuthKeyRequired
                    | RefusalCode::BadRequest
            ),
            ClientError::Server(e) => {
                matches!(e.code, ErrorCode::NotRegistered | ErrorCode::NodeExpired)
            }
            ClientError::KeyMismatch { .. } | ClientError::State(_) => true,
            _ => false,
        }
    }
}

/// What the session loop reports.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    /// A session is established.
    Connected,
    /// A new netmap (replaces the previous one).
    NetMap(Arc<NetMap>),
    /// The client registered (again) during the loop.
    Registered(Registration),
    /// The session was lost; the loop retries after `retry_in`.
    Disconnected {
        /// Why.
        error: String,
        /// Next attempt in.
        retry_in: Duration,
    },
    /// Only a human can fix this (see [`ClientError::needs_login`]); the loop has stopped.
    NeedsLogin(String),
}

/// What the node currently wants the server to know.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Desired {
    endpoints: Vec<SocketAddr>,
    relay_region: Option<u32>,
    health: Health,
    hostinfo: Hostinfo,
}

/// A node's connection to its coordination server.
pub struct ControlClient {
    opts: ClientOptions,
    state: NodeState,
}

fn server_id(l: &LoginServer) -> String {
    format!("tg://{}", l.address())
}

impl ControlClient {
    /// Loads (or creates) the node state in `opts.state_dir` and checks the server pin.
    pub fn new(opts: ClientOptions) -> Result<ControlClient, ClientError> {
        let mut state = NodeState::load_or_create(&opts.state_dir).map_err(ClientError::State)?;
        let id = server_id(&opts.login_server);
        if state.login_server.as_deref() != Some(id.as_str()) {
            if state.login_server.is_some() {
                log::info!(
                    "login server changed from {} to {id}: starting a new registration",
                    state.login_server.as_deref().unwrap_or_default()
                );
            }
            state.login_server = Some(id);
            state.server_key = None;
            state.registration = None;
            state.save(&opts.state_dir).map_err(ClientError::State)?;
        }
        if let (Some(url_key), Some(pinned)) = (opts.login_server.server_key, state.server_key) {
            if url_key != pinned {
                return Err(ClientError::KeyMismatch {
                    url: url_key.to_base64(),
                    pinned: pinned.to_base64(),
                    state_dir: opts.state_dir.display().to_string(),
                });
            }
        }
        Ok(ControlClient { opts, state })
    }

    /// The persisted state.
    pub fn state(&self) -> &NodeState {
        &self.state
    }

    /// The WireGuard private key the node's device must use.
    pub fn node_private_key(&self) -> Key {
        self.state.node_key
    }

    /// The machine's public key (its identity towards the server).
    pub fn machine_public_key(&self) -> Key {
        self.state.machine_key.public_key()
    }

    /// The last registration, if any.
    pub fn registration(&self) -> Option<&Registration> {
        self.state.registration.as_ref()
    }

    /// The hostinfo sent on registration and session start.
    pub fn set_hostinfo(&mut self, h: Hostinfo) {
        self.opts.hostinfo = h;
    }

    fn save(&self) -> Result<(), ClientError> {
        self.state
            .save(&self.opts.state_dir)
            .map_err(ClientError::State)
    }

    async fn tcp(&self) -> Result<TcpStream, ClientError> {
        let addr = self.opts.login_server.address();
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr))
            .await
            .map_err(|_| ClientError::Connect {
                addr: addr.clone(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
            })?
            .map_err(|source| ClientError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn server_key(&mut self) -> Result<Key, ClientError> {
        if let Some(k) = self.opts.login_server.server_key.or(self.state.server_key) {
            return Ok(k);
        }
        let key = fetch_server_key(self.tcp().await?).await?;
        log::warn!(
            "pinned the control server key {} on first use (pass tg://host:port#KEY to verify it)",
            key.to_base64()
        );
        self.state.server_key = Some(key);
        self.save()?;
        Ok(key)
    }

    async fn connect(&mut self) -> Result<Connection<TcpStream>, ClientError> {
        let server_key = self.server_key().await?;
        let stream = self.tcp().await?;
        let (conn, _hello) = client_handshake(stream, &self.state.machine_key, &server_key).await?;
        if self.state.server_key != Some(server_key) {
            self.state.server_key = Some(server_key);
            self.save()?;
        }
        Ok(conn)
    }

    async fn register_on(
        &mut self,
        conn: &mut Connection<TcpStream>,
        auth_key: Option<&str>,
        node_key: Key,
    ) -> Result<Registration, ClientError> {
        let req = ClientMessage::Register(RegisterRequest {
            auth_key: auth_key.map(str::to_string),
            node_key: node_key.public_key(),
            hostinfo: self.opts.hostinfo.clone(),
        });
        conn.writer.send(&req).await?;
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
            loop {
                match conn.reader.recv(decode_server_message).await? {
                    ServerMessage::Register(r) => return Ok::<_, ClientError>(r),
                    ServerMessage::KeepAlive { .. } => continue,
                    ServerMessage::Error(e) => return Err(ClientError::Server(e)),
                    other => {
                        return Err(ClientError::Unexpected(format!(
                            "{:?}",
                            std::mem::discriminant(&other)
                        )))
                    }
                }
            }
        })
        .await
        .map_err(|_| ClientError::Transport(TransportError::Timeout("registration")))??;
        match answer {
            RegisterResponse::Registered(reg) => {
                self.state.node_key = node_key;
                self.state.registration = Some(reg.clone());
                self.save()?;
                Ok(reg)
            }
            RegisterResponse::Refused(r) => Err(ClientError::Refused(r)),
        }
    }

    /// Registers this machine (with `auth_key`, or without one to refresh a registration that
    /// has not expired) and persists the result.
    pub async fn register(&mut self, auth_key: Option<&str>) -> Result<Registration, ClientError> {
        let mut conn = self.connect().await?;
        let key = self.state.node_key;
        let r = self.register_on(&mut conn, auth_key, key).await;
        conn.writer.shutdown().await;
        r
    }

    /// Replaces the WireGuard key with `new_key` (e.g. [`Key::generate_private`]) and tells
    /// the server (no auth key needed while the registration is valid). The new key is
    /// persisted only once the server accepted it. A device that switches to the new key
    /// before this call (keeping its sessions) loses no traffic: peers that still know the
    /// old key keep using the established sessions until the server's netmap reaches them.
    pub async fn rotate_node_key(&mut self, new_key: Key) -> Result<Registration, ClientError> {
        let mut conn = self.connect().await?;
        let r = self.register_on(&mut conn, None, new_key).await;
        conn.writer.shutdown().await;
        r
    }

    /// Starts the background session loop. Events arrive on the returned channel, which the
    /// caller must keep draining.
    pub fn start(self) -> (ControlHandle, mpsc::UnboundedReceiver<ClientEvent>) {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let desired = Desired {
            hostinfo: self.opts.hostinfo.clone(),
            ..Desired::default()
        };
        let (desired_tx, desired_rx) = watch::channel(desired);
        let (netmap_tx, netmap_rx) = watch::channel(None);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run_loop(self, desired_rx, events_tx, netmap_tx, stop_rx));
        (
            ControlHandle {
                desired: desired_tx,
                netmap: netmap_rx,
                stop: Some(stop_tx),
                task: Some(task),
            },
            events_rx,
        )
    }
}

/// Controls a running session loop.
pub struct ControlHandle {
    desired: watch::Sender<Desired>,
    netmap: watch::Receiver<Option<Arc<NetMap>>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ControlHandle {
    /// Reports the node's WireGuard endpoints.
    pub fn set_endpoints(&self, endpoints: Vec<SocketAddr>) {
        self.desired.send_if_modified(|d| {
            let changed = d.endpoints != endpoints;
            d.endpoints = endpoints;
            changed
        });
    }

    /// Reports the node's home relay region.
    pub fn set_relay_region(&self, region: Option<u32>) {
        self.desired.send_if_modified(|d| {
            let changed = d.relay_region != region;
            d.relay_region = region;
            changed
        });
    }

    /// Reports the LAN health probe's result.
    pub fn set_health(&self, health: Health) {
        self.desired.send_if_modified(|d| {
            let changed = d.health != health;
            d.health = health;
            changed
        });
    }

    /// Reports new hostinfo (advertised routes, exit offer, priority; `tailgate set`).
    pub fn set_hostinfo(&self, hostinfo: Hostinfo) {
        self.desired.send_if_modified(|d| {
            let changed = d.hostinfo != hostinfo;
            d.hostinfo = hostinfo;
            changed
        });
    }

    /// The latest netmap (also delivered as [`ClientEvent::NetMap`]).
    pub fn netmap(&self) -> watch::Receiver<Option<Arc<NetMap>>> {
        self.netmap.clone()
    }

    /// Stops the loop and waits for it (the connection is closed, the server marks the node
    /// offline).
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for ControlHandle {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

fn jitter(d: Duration) -> Duration {
    // ±20 %.
    let r = f64::from(OsRng.next_u32()) / f64::from(u32::MAX);
    d.mul_f64(0.8 + 0.4 * r)
}

async fn run_loop(
    mut client: ControlClient,
    mut desired: watch::Receiver<Desired>,
    events: mpsc::UnboundedSender<ClientEvent>,
    netmap: watch::Sender<Option<Arc<NetMap>>>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut backoff = client.opts.backoff_initial;
    let mut reregistered = false;
    loop {
        let mut got_netmap = false;
        let outcome = tokio::select! {
            _ = &mut stop => return,
            r = session_once(&mut client, &mut desired, &events, &netmap, &mut got_netmap) => r,
        };
        let Err(e) = outcome else {
            return;
        };
        if got_netmap {
            backoff = client.opts.backoff_initial;
            reregistered = false;
        }
        if e.needs_login() {
            let can_retry = matches!(e, ClientError::Server(_)) && client.opts.auth_key.is_some();
            if can_retry && !reregistered {
                log::info!("{e}; registering again with the configured auth key");
                reregistered = true;
                client.state.registration = None;
                continue;
            }
            let _ = events.send(ClientEvent::NeedsLogin(e.to_string()));
            return;
        }
        let delay = jitter(backoff);
        log::info!("control session: {e}; retrying in {delay:?}");
        let _ = events.send(ClientEvent::Disconnected {
            error: e.to_string(),
            retry_in: delay,
        });
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(delay) => {}
        }
        backoff = (backoff * 2).min(client.opts.backoff_max);
    }
}

/// One connection: (register,) start the session, relay until it fails. `Ok` only when the
/// caller dropped the handle.
async fn session_once(
    client: &mut ControlClient,
    desired: &mut watch::Receiver<Desired>,
    events: &mpsc::UnboundedSender<ClientEvent>,
    netmap: &watch::Sender<Option<Arc<NetMap>>>,
    got_netmap: &mut bool,
) -> Result<(), ClientError> {
    let mut conn = client.connect().await?;
    let current = desired.borrow_and_update().clone();
    client.opts.hostinfo = current.hostinfo.clone();
    if client.state.registration.is_none() {
        let Some(key) = client.opts.auth_key.clone() else {
            return Err(ClientError::Refused(Refusal::new(
                RefusalCode::AuthKeyRequired,
            )));
        };
        let node_key = client.state.node_key;
        let reg = client.register_on(&mut conn, Some(&key), node_key).await?;
        let _ = events.send(ClientEvent::Registered(reg));
    }
    conn.writer
        .send(&ClientMessage::StartSession(NodeUpdate {
            endpoints: Some(current.endpoints.clone()),
            health: Some(current.health.clone()),
            hostinfo: Some(current.hostinfo.clone()),
            relay_region: current.relay_region,
        }))
        .await?;
    let _ = events.send(ClientEvent::Connected);
    let mut sent = current;
    let mut interval = DEFAULT_KEEPALIVE;
    let mut ka = tokio::time::interval(interval);
    ka.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_received = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(last_received + interval * 3) => {
                return Err(ClientError::Transport(TransportError::Timeout(
                    "server silent for three keepalive intervals",
                )));
            }
            // `recv` is cancel-safe: it only awaits socket reads, never mid-frame state.
            m = conn.reader.recv(decode_server_message) => {
                last_received = tokio::time::Instant::now();
                match m? {
                    ServerMessage::NetMap(nm) => {
                        let ms = Duration::from_millis(nm.keepalive_interval_ms.clamp(100, 600_000));
                        if ms != interval {
                            interval = ms;
                            ka = tokio::time::interval(interval);
                            ka.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        }
                        let nm: Arc<NetMap> = Arc::from(nm);
                        *got_netmap = true;
                        netmap.send_replace(Some(nm.clone()));
                        let _ = events.send(ClientEvent::NetMap(nm));
                    }
                    ServerMessage::KeepAlive { interval_ms } => {
                        let ms = Duration::from_millis(interval_ms.clamp(100, 600_000));
                        if ms != interval {
                            interval = ms;
                            ka = tokio::time::interval(interval);
                            ka.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        }
                    }
                    ServerMessage::Error(e) => return Err(ClientError::Server(e)),
                    ServerMessage::Register(_) => {}
                }
            }
            changed = desired.changed() => {
                if changed.is_err() {
                    conn.writer.shutdown().await;
                    return Ok(());
                }
                let now = desired.borrow_and_update().clone();
                let update = NodeUpdate {
                    endpoints: (now.endpoints != sent.endpoints).then(|| now.endpoints.clone()),
                    health: (now.health != sent.health).then(|| now.health.clone()),
                    hostinfo: (now.hostinfo != sent.hostinfo).then(|| now.hostinfo.clone()),
                    relay_region: if now.relay_region != sent.relay_region {
                        now.relay_region
                    } else {
                        None
                    },
                };
                if update != NodeUpdate::default() {
                    conn.writer.send(&ClientMessage::Update(update)).await?;
                    client.opts.hostinfo = now.hostinfo.clone();
                    sent = now;
                }
            }
            _ = ka.tick() => {
                conn.writer.send(&ClientMessage::KeepAlive).await?;
            }
        }
    }
}
