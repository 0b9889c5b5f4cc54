//! The admin API: a unix socket (`admin.sock` in the state dir, mode 0600, so only the server's
//! owner — normally root — can use it) speaking one JSON request line and one JSON answer line,
//! like the node daemon's socket.
//!
//! The `tailgate control …` admin commands are thin clients of this API; scripts may use it
//! directly (`{"command":"nodes_list"}` → `{"ok":[…]}` or `{"error":"…"}`).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The admin socket's file name inside the state dir.
pub const ADMIN_SOCKET: &str = "admin.sock";
/// Largest request line accepted.
pub const MAX_REQUEST_BYTES: u64 = 4 * 1024 * 1024;

/// A request on the admin socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum AdminRequest {
    /// Server key, login URL, counts.
    Info,
    /// All users.
    UsersList,
    /// Create a user.
    UsersCreate {
        /// User name.
        name: String,
    },
    /// Create an auth key.
    AuthkeyCreate {
        /// Owner (created if it is the default user and missing).
        user: String,
        /// Can register many machines.
        #[serde(default)]
        reusable: bool,
        /// Nodes registered with it are ephemeral.
        #[serde(default)]
        ephemeral: bool,
        /// Tags (`tag:name`) for the nodes.
        #[serde(default)]
        tags: Vec<String>,
        /// Lifetime in seconds; `None` for the default (90 days), `Some(0)` for never.
        #[serde(default)]
        expiry_secs: Option<u64>,
    },
    /// All auth keys.
    AuthkeyList,
    /// Revoke an auth key by its id (`tgkey-<id>-…`).
    AuthkeyRevoke {
        /// The key's public id.
        id: String,
    },
    /// All nodes.
    NodesList,
    /// Expire a node's key now (it drops out of netmaps and must log in again).
    NodesExpire {
        /// Node id or name.
        node: String,
    },
    /// Delete a node.
    NodesDelete {
        /// Node id or name.
        node: String,
    },
    /// Rename a node (its MagicDNS name).
    NodesRename {
        /// Node id or name.
        node: String,
        /// The new name (made a unique DNS label).
        name: String,
    },
    /// All routes of all nodes.
    RoutesList,
    /// Replace the policy (HuJSON text); refused with the line and reason if it does not
    /// parse or its tests fail, and the old one stays.
    PolicySet {
        /// The policy file's text.
        text: String,
    },
    /// The policy in force (its text).
    PolicyGet,
    /// Approve routes of a node.
    RoutesApprove {
        /// Node id or name.
        node: String,
        /// Prefixes (`0.0.0.0/0` and `::/0` for exit-node service).
        routes: Vec<IpNet>,
    },
    /// Withdraw approval of routes of a node.
    RoutesUnapprove {
        /// Node id or name.
        node: String,
        /// Prefixes.
        routes: Vec<IpNet>,
    },
}

/// The answer on the admin socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminResponse {
    /// Success, with the command's data.
    Ok(serde_json::Value),
    /// Failure, with a human-readable reason.
    Error(String),
}

/// `info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// tailgate version.
    pub version: String,
    /// Protocol version.
    pub protocol: u32,
    /// The server's Noise public key (base64).
    pub public_key: String,
    /// The URL nodes use: `tg://HOST:PORT#KEY`.
    pub login_url: String,
    /// The listening address.
    pub listen: String,
    /// The tailnet domain.
    pub domain: String,
    /// Registered nodes.
    pub nodes: usize,
    /// Nodes with a connected session.
    pub connected: usize,
}

/// A user, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Creation time (Unix seconds).
    pub created_at: u64,
}

/// An auth key, as listed (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthKeyInfo {
    /// Public id (`tgkey-<id>-…`).
    pub id: String,
    /// Owner.
    pub user: String,
    /// Reusable.
    pub reusable: bool,
    /// Ephemeral nodes.
    pub ephemeral: bool,
    /// Tags.
    pub tags: Vec<String>,
    /// Created (Unix seconds).
    pub created_at: u64,
    /// Expires (Unix seconds).
    pub expires_at: Option<u64>,
    /// Used at least once.
    pub used: bool,
    /// The node that used it.
    pub used_by: Option<u64>,
    /// Expired at listing time.
    pub expired: bool,
    /// Revoked.
    pub revoked: bool,
}

/// `authkey create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedAuthKey {
    /// The full key, shown once: pass it to `tailgate up --auth-key`.
    pub key: String,
    /// Its description.
    pub info: AuthKeyInfo,
}

/// A route, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInfo {
    /// Node id.
    pub node_id: u64,
    /// Node name.
    pub node: String,
    /// Prefix.
    pub prefix: IpNet,
    /// Advertised by the node now.
    pub advertised: bool,
    /// Approved.
    pub approved: bool,
    /// The node is primary for it.
    pub primary: bool,
    /// The node's HA priority (higher preferred).
    pub priority: u32,
    /// The node's session is connected.
    pub connected: bool,
    /// The node's LAN probe is ok.
    pub lan_ok: bool,
}

/// A node, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Id.
    pub id: u64,
    /// Unique hostname.
    pub name: String,
    /// `name.domain`.
    pub fqdn: String,
    /// Owner.
    pub user: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Tailnet IPv4.
    pub ipv4: Ipv4Addr,
    /// Tailnet IPv6.
    pub ipv6: Ipv6Addr,
    /// WireGuard public key (base64).
    pub node_key: String,
    /// Machine key (base64).
    pub machine_key: String,
    /// Reported OS.
    pub os: String,
    /// Online (connected or within the offline grace).
    pub online: bool,
    /// Session connected now.
    pub connected: bool,
    /// Last seen (Unix seconds).
    pub last_seen: Option<u64>,
    /// Key expiry (Unix seconds).
    pub key_expiry: Option<u64>,
    /// Key expired.
    pub expired: bool,
    /// Ephemeral.
    pub ephemeral: bool,
    /// HA priority.
    pub route_priority: u32,
    /// LAN probe ok.
    pub lan_ok: bool,
    /// Reported endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// Its routes.
    pub routes: Vec<RouteInfo>,
}

/// Sends one admin request to the socket at `socket` and returns the `ok` data.
pub async fn request(socket: &Path, req: &AdminRequest) -> Result<serde_json::Value> {
    let stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "cannot reach the control server's admin socket {} (is `tailgate control serve` running with this --state-dir?)",
            socket.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut out = serde_json::to_vec(req)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    let mut line = String::new();
    BufReader::new(read.take(64 << 20))
        .read_line(&mut line)
        .await?;
    if line.is_empty() {
        return Err(anyhow!("the control server closed the admin connection"));
    }
    match serde_json::from_str(&line).context("unreadable admin answer")? {
        AdminResponse::Ok(v) => Ok(v),
        AdminResponse::Error(e) => Err(anyhow!("{e}")),
    }
}

/// [`request`], decoding the data as `T`.
pub async fn request_as<T: DeserializeOwned>(socket: &Path, req: &AdminRequest) -> Result<T> {
    let v = request(socket, req).await?;
    serde_json::from_value(v).context("unexpected admin answer")
}

/// Reads one request line from `stream`, answers with `handle`, writes the answer line.
pub async fn answer<F>(stream: UnixStream, handle: F) -> Result<()>
where
    F: FnOnce(AdminRequest) -> AdminResponse,
{
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST_BYTES))
        .read_line(&mut line)
        .await?;
    let response = match serde_json::from_str::<AdminRequest>(&line) {
        Ok(req) => handle(req),
        Err(e) => AdminResponse::Error(format!("bad admin request: {e}")),
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_stable_names() {
        let r = AdminRequest::RoutesApprove {
            node: "r1".into(),
            routes: vec!["10.0.0.0/8".parse().unwrap()],
        };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(
            j,
            r#"{"command":"routes_approve","node":"r1","routes":["10.0.0.0/8"]}"#
        );
        let r: AdminRequest =
            serde_json::from_str(r#"{"command":"authkey_create","user":"u"}"#).unwrap();
        assert_eq!(
            r,
            AdminRequest::AuthkeyCreate {
                user: "u".into(),
                reusable: false,
                ephemeral: false,
                tags: vec![],
                expiry_secs: None
            }
        );
    }
}
