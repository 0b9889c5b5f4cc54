//! The local control socket the CLI talks to (`/run/tailgate/tailgate.sock`): one JSON
//! request line, one JSON response line.

pub mod status;
pub mod unix_socket;

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

pub use status::Status;

use crate::forwarding::RoutingChange;
use crate::prefs::RoutingPrefs;

/// Default path of the daemon's control socket.
pub const DEFAULT_SOCKET: &str = "/run/tailgate/tailgate.sock";
/// Largest request line accepted from a client.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// A request from the CLI.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// The node's status.
    Status,
    /// Change routing preferences (`tailgate set`).
    Set {
        /// The fields to change.
        change: RoutingChange,
    },
    /// Peers offering exit-node service.
    ExitNodes,
    /// Register with a coordination server (if an auth key is given) and start the session
    /// (`tailgate up`; control mode only).
    Up(Box<UpRequest>),
    /// Stop the control session and remove the peers it configured (`tailgate down`).
    Down,
    /// The MagicDNS resolver's state (`tailgate dns status`).
    DnsStatus,
    /// Ask the resolver (`tailgate dns query`).
    DnsQuery {
        /// The name (or an address, with type PTR).
        name: String,
        /// The record type (`A`, `AAAA`, `PTR`, …).
        rtype: String,
    },
    /// One discovery ping to a peer over its current path (`tailgate ping`).
    Ping {
        /// The peer's name, tailnet address or public key.
        peer: String,
    },
    /// STUN checks against the relay map's servers (`tailgate netcheck`).
    Netcheck,
}

/// The answer to one `tailgate ping`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PongInfo {
    /// The peer's name.
    pub name: String,
    /// Its tailnet address.
    pub ip: String,
    /// The path the pong came over: `direct IP:PORT` or `relay REGION`.
    pub via: String,
    /// Whether that path is direct.
    pub direct: bool,
    /// Round-trip time, milliseconds.
    pub rtt_ms: f64,
}

/// What `tailgate dns status` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DnsStatus {
    /// Whether the resolver runs.
    pub running: bool,
    /// Why it does not.
    pub reason: Option<String>,
    /// Its listen addresses.
    pub listen: Vec<std::net::SocketAddr>,
    /// The tailnet domain.
    pub domain: String,
    /// The names it answers (`host.domain`).
    pub names: Vec<String>,
    /// Split-DNS routes, `suffix → upstreams`.
    pub split: Vec<String>,
    /// Global nameservers.
    pub global: Vec<String>,
    /// Query counters.
    pub stats: Option<crate::dns::DnsStatsSnapshot>,
    /// How the system's resolver points at MagicDNS (`accept_dns`), or why it does not.
    #[serde(default)]
    pub os: String,
}

/// `tailgate up` flags.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpRequest {
    /// The coordination server (`tg://HOST:PORT#KEY`); default: `control.login_server`.
    #[serde(default)]
    pub login_server: Option<String>,
    /// Auth key to register with; not needed while the node's registration is valid.
    #[serde(default)]
    pub auth_key: Option<String>,
    /// Requested hostname; default: `control.hostname`, else the system's.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Subnet routes to advertise.
    #[serde(default)]
    pub advertise_routes: Vec<ipnet::IpNet>,
    /// Offer exit-node service.
    #[serde(default)]
    pub advertise_exit_node: bool,
    /// Install the subnet routes peers advertise.
    #[serde(default)]
    pub accept_routes: bool,
    /// HA priority among routers for the same prefix (higher is preferred).
    #[serde(default)]
    pub route_priority: u32,
    /// Replace the node key now (it is also replaced automatically before it expires).
    #[serde(default)]
    pub rotate_key: bool,
}

/// The answer to a successful `tailgate up`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpResult {
    /// The login server in use.
    pub login_server: String,
    /// The unique name the server assigned.
    pub name: String,
    /// The node's tailnet addresses.
    pub addresses: Vec<String>,
}

/// The daemon's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// The node's status.
    Status(Box<Status>),
    /// The change was applied; the preferences now in force.
    Set(Box<RoutingPrefs>),
    /// Exit nodes.
    ExitNodes(Vec<ExitNode>),
    /// Registered; the session is starting.
    Up(Box<UpResult>),
    /// The session is stopped.
    Down,
    /// The resolver's state.
    DnsStatus(Box<DnsStatus>),
    /// The resolver's answer.
    DnsAnswer(Box<crate::dns::query::QueryAnswer>),
    /// A pong.
    Pong(Box<PongInfo>),
    /// A netcheck report.
    Netcheck(Box<crate::netcheck::Report>),
    /// The request failed.
    Error(String),
}

/// A peer offering exit-node service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExitNode {
    /// Its tailnet IPv4 address (else IPv6).
    pub ip: String,
    /// Its name.
    pub hostname: String,
    /// Country, when known (not in static mode).
    pub country: Option<String>,
    /// City, when known (not in static mode).
    pub city: Option<String>,
    /// "selected", "online" (handshake in the last 3 minutes) or "idle".
    pub status: String,
}

/// Answers requests on `listener` with `handler` until the task is dropped.
pub async fn serve<F, Fut>(listener: UnixListener, handler: F)
where
    F: Fn(Request) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Response> + Send,
{
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                log::warn!("control socket accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, handler).await {
                log::debug!("control client: {e}");
            }
        });
    }
}

async fn answer<F, Fut>(stream: UnixStream, handler: F) -> Result<()>
where
    F: Fn(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST_BYTES))
        .read_line(&mut line)
        .await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(req) => handler(req).await,
        Err(e) => Response::Error(format!("bad request: {e}")),
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

/// Sends one request to the daemon at `socket` and returns its answer.
pub async fn request(socket: &Path, req: &Request) -> Result<Response> {
    let stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "cannot reach the tailgate daemon at {} (is `tailgate daemon` running? use --socket for another path)",
            socket.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut out = serde_json::to_vec(req)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    if line.is_empty() {
        return Err(anyhow!("daemon closed the connection without answering"));
    }
    serde_json::from_str(&line).context("daemon sent an unreadable answer")
}
