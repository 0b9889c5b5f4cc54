//! `tailgate control serve`: the tokio server around [`Tailnet`].
//!
//! Tasks: the TCP acceptor (one task per connection: Noise handshake, then registration and
//! the streaming session), a timer that runs [`Tailnet::tick`] at the next deadline (offline
//! grace, ephemeral deletion, hold-down ends, key expiry), and the admin socket. They share the
//! [`Tailnet`] under a mutex that is never held across an `.await`.
//!
//! Per session: a reader task turns frames into messages (so reads are never cancelled
//! mid-frame), and the session loop multiplexes incoming messages, netmap pushes and
//! keepalives. A session silent for three keepalive intervals is closed; so is one whose
//! writes stall for [`WRITE_TIMEOUT`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;

use super::admin::{self, ADMIN_SOCKET};
use super::login_url::LoginServer;
use super::policy::Policy;
use super::proto::{decode_client_message, ClientMessage, ErrorCode, ServerError, ServerMessage};
use super::store::Store;
use super::tailnet::{Push, SessionTicket, Tailnet, TailnetConfig, POLICY_STATE_KEY};
use super::transport::{server_accept, Accepted, Connection, SecureWriter, TransportError};
use crate::api::unix_socket::BoundSocket;
use crate::wg::Key;

/// A session whose writes stall this long is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message accepted from a node (hostinfo with the maximum number of routes and
/// endpoints is far below this).
pub const MAX_CLIENT_MESSAGE: usize = 256 * 1024;
/// Most simultaneous connections (sessions plus handshakes in progress).
pub const MAX_CONNECTIONS: usize = 10_000;

/// Options of `tailgate control serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// TCP address to listen on.
    pub listen: String,
    /// State directory (database, admin socket).
    pub state_dir: PathBuf,
    /// HuJSON policy file.
    pub policy: Option<PathBuf>,
    /// `host:port` nodes use to reach the server, for the printed login URL.
    pub public_addr: Option<String>,
    /// Control-plane tunables.
    pub tailnet: TailnetConfig,
}

struct Shared {
    tailnet: Mutex<Tailnet>,
    wake: Notify,
    server_key: Key,
    keepalive: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Tailnet> {
        self.tailnet.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A bound, not yet running server.
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    admin_listener: UnixListener,
    admin_socket: BoundSocket,
    local_addr: SocketAddr,
    login_url: LoginServer,
}

impl Server {
    /// Opens the store, loads the policy, binds the TCP port and the admin socket.
    pub async fn bind(opts: ServeOptions) -> Result<Server> {
        let mut cfg = opts.tailnet;
        let mut store = Store::open(&opts.state_dir)?;
        if let Some(p) = &opts.policy {
            cfg.policy = Policy::load(p)?;
            cfg.policy_file = Some(p.clone());
            store.set_state(POLICY_STATE_KEY, &cfg.policy.text)?;
            log::info!("policy loaded from {}", p.display());
        } else if let Some(text) = store.get_state(POLICY_STATE_KEY)? {
            cfg.policy = Policy::parse(&text, "stored policy")?;
            log::info!("policy loaded from the store (set with `tailgate control policy set`)");
        }
        if !cfg.relay_map.regions.is_empty() || cfg.policy.derp_map.is_some() {
            let map = super::tailnet::relay_map_of(&cfg.relay_map, &cfg.policy)?;
            log::info!("relay map: {} region(s)", map.regions.len());
        }
        let keepalive = cfg.keepalive.max(Duration::from_millis(100));
        let mut tailnet = Tailnet::new(store, cfg, Instant::now())?;
        let server_key = tailnet.server_private_key();
        let listener = TcpListener::bind(&opts.listen)
            .await
            .with_context(|| format!("listening on {}", opts.listen))?;
        let local_addr = listener.local_addr()?;
        let public = match &opts.public_addr {
            Some(a) => a.clone(),
            None => {
                let mut a = local_addr;
                if a.ip().is_unspecified() {
                    a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                a.to_string()
            }
        };
        let login_url: LoginServer = format!("tg://{public}")
            .parse()
            .map_err(|e| anyhow!("--public-addr: {e}"))?;
        let login_url = login_url.with_key(server_key.public_key());
        tailnet.set_endpoint_info(local_addr.to_string(), login_url.to_string());
        let (admin_socket, admin_listener) = BoundSocket::bind(&opts.state_dir.join(ADMIN_SOCKET))?;
        Ok(Server {
            shared: Arc::new(Shared {
                tailnet: Mutex::new(tailnet),
                wake: Notify::new(),
                server_key,
                keepalive,
            }),
            listener,
            admin_listener,
            admin_socket,
            local_addr,
            login_url,
        })
    }

    /// The bound TCP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The login URL nodes use (`tg://host:port#key`).
    pub fn login_url(&self) -> &LoginServer {
        &self.login_url
    }

    /// The admin socket's path.
    pub fn admin_socket(&self) -> &Path {
        self.admin_socket.path()
    }

    /// Serves until `shutdown` completes, then closes every session.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let Server {
            shared,
            listener,
            admin_listener,
            admin_socket,
            ..
        } = self;
        let mut background = JoinSet::new();
        background.spawn(timer_loop(shared.clone()));
        background.spawn(admin_loop(admin_listener, shared.clone()));
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if conns.len() >= MAX_CONNECTIONS {
                            log::warn!("refusing {peer}: {MAX_CONNECTIONS} connections open");
                            continue;
                        }
                        conns.spawn(handle_connection(shared.clone(), stream, peer));
                    }
                    Err(e) => {
                        log::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        log::info!("control server shutting down");
        shared.lock().shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        conns.abort_all();
        background.abort_all();
        drop(admin_socket);
        Ok(())
    }
}

/// Runs `tailgate control serve` until SIGINT or SIGTERM.
pub async fn serve(opts: ServeOptions) -> Result<()> {
    let server = Server::bind(opts).await?;
    log::info!("control server listening on {}", server.local_addr());
    println!(
        "tailgate control server listening on {}",
        server.local_addr()
    );
    println!("login URL: {}", server.login_url());
    println!("admin socket: {}", server.admin_socket().display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    server
        .run(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await
}

async fn timer_loop(shared: Arc<Shared>) {
    loop {
        let deadline = shared.lock().next_deadline(Instant::now());
        let sleep = match deadline {
            Some(d) => tokio::time::sleep_until(d.into()),
            None => tokio::time::sleep(Duration::from_secs(3600)),
        };
        tokio::select! {
            _ = sleep => shared.lock().tick(Instant::now()),
            _ = shared.wake.notified() => {}
        }
    }
}

async fn admin_loop(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                log::warn!("admin socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let res = admin::answer(stream, |req| {
                log::debug!("admin request: {req:?}");
                let resp = shared.lock().handle_admin(req, Instant::now());
                shared.wake.notify_one();
                resp
            })
            .await;
            if let Err(e) = res {
                log::debug!("admin client: {e:#}");
            }
        });
    }
}

async fn handle_connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    match server_accept(stream, &shared.server_key).await {
        Ok(Accepted::KeyRequest) => log::debug!("{peer}: answered a key request"),
        Ok(Accepted::Session(conn, _hello)) => {
            let machine = conn.remote_static;
            if let Err(e) = session(&shared, *conn).await {
                log::debug!("{peer} (machine {}): {e:#}", machine.short());
            }
        }
        Err(TransportError::Closed) => {}
        Err(e) => log::info!("{peer}: rejected connection: {e}"),
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn send<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut SecureWriter<W>,
    msg: &ServerMessage,
) -> Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, writer.send(msg))
        .await
        .map_err(|_| anyhow!("write timed out"))??;
    Ok(())
}

async fn next_push(ticket: &mut Option<SessionTicket>) -> Option<Push> {
    match ticket {
        Some(t) => {
            if t.pushes.changed().await.is_err() {
                return None;
            }
            let push = t.pushes.borrow_and_update().clone();
            Some(push)
        }
        None => std::future::pending().await,
    }
}

async fn session(shared: &Arc<Shared>, conn: Connection<TcpStream>) -> Result<()> {
    let machine = conn.remote_static;
    let Connection {
        mut reader,
        mut writer,
        ..
    } = conn;
    reader.set_max_message(MAX_CLIENT_MESSAGE);
    let (msg_tx, mut msg_rx) = mpsc::channel(16);
    let _reader_task = AbortOnDrop(tokio::spawn(async move {
        loop {
            let r = reader.recv(decode_client_message).await;
            let stop = r.is_err();
            if msg_tx.send(r).await.is_err() || stop {
                break;
            }
        }
    }));
    let keepalive = shared.keepalive;
    let idle = keepalive * 3;
    let mut ticket: Option<SessionTicket> = None;
    let mut ka = tokio::time::interval(keepalive);
    ka.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sent = Instant::now();
    let mut last_received = Instant::now();
    let protocol_error = |m: &str| ServerError {
        code: ErrorCode::Protocol,
        message: m.to_string(),
    };

    let result: Result<()> = async {
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until((last_received + idle).into()) => {
                    return Err(anyhow!("silent for {idle:?}, closing"));
                }
                m = msg_rx.recv() => {
                    last_received = Instant::now();
                    let msg = match m {
                        None | Some(Err(TransportError::Closed)) => return Ok(()),
                        Some(Err(e @ (TransportError::Proto(_) | TransportError::Frame(_)))) => {
                            let _ = send(&mut writer, &ServerMessage::Error(protocol_error(&e.to_string()))).await;
                            return Err(e.into());
                        }
                        Some(Err(e)) => return Err(e.into()),
                        Some(Ok(msg)) => msg,
                    };
                    match msg {
                        ClientMessage::Register(req) => {
                            let resp = shared.lock().register(&machine, &req, Instant::now());
                            shared.wake.notify_one();
                            send(&mut writer, &ServerMessage::Register(resp)).await?;
                            last_sent = Instant::now();
                        }
                        ClientMessage::StartSession(update) => {
                            if ticket.is_some() {
                                let e = protocol_error("session already started");
                                let _ = send(&mut writer, &ServerMessage::Error(e.clone())).await;
                                return Err(e.into());
                            }
                            let attached = shared.lock().attach(&machine, &update, Instant::now());
                            shared.wake.notify_one();
                            match attached {
                                Ok(t) => ticket = Some(t),
                                Err(e) => {
                                    let _ = send(&mut writer, &ServerMessage::Error(e.clone())).await;
                                    return Err(e.into());
                                }
                            }
                        }
                        ClientMessage::Update(update) => {
                            let Some(t) = &ticket else {
                                let e = protocol_error("update before start_session");
                                let _ = send(&mut writer, &ServerMessage::Error(e.clone())).await;
                                return Err(e.into());
                            };
                            let res = shared.lock().update(t.node_id, t.generation, &update, Instant::now());
                            shared.wake.notify_one();
                            if let Err(e) = res {
                                let _ = send(&mut writer, &ServerMessage::Error(e.clone())).await;
                                return Err(e.into());
                            }
                        }
                        ClientMessage::KeepAlive => {}
                    }
                }
                push = next_push(&mut ticket) => match push {
                    None => {
                        let e = ServerError {
                            code: ErrorCode::ShuttingDown,
                            message: "session ended by the server".into(),
                        };
                        let _ = send(&mut writer, &ServerMessage::Error(e)).await;
                        return Ok(());
                    }
                    Some(Push::None) => {}
                    Some(Push::NetMap(nm)) => {
                        send(&mut writer, &ServerMessage::NetMap(Box::new((*nm).clone()))).await?;
                        last_sent = Instant::now();
                    }
                    Some(Push::Close(e)) => {
                        let _ = send(&mut writer, &ServerMessage::Error(e.clone())).await;
                        return Err(e.into());
                    }
                },
                _ = ka.tick() => {
                    if last_sent.elapsed() >= keepalive / 2 {
                        let interval_ms = keepalive.as_millis() as u64;
                        send(&mut writer, &ServerMessage::KeepAlive { interval_ms }).await?;
                        last_sent = Instant::now();
                    }
                }
            }
        }
    }
    .await;
    if let Some(t) = ticket {
        shared
            .lock()
            .detach(t.node_id, t.generation, Instant::now());
        shared.wake.notify_one();
    }
    writer.shutdown().await;
    result
}
