//! The messages between a node and the coordination server, as serde JSON.
//!
//! Every message travels inside the encrypted transport ([`super::transport`]) as one JSON
//! document. The protocol is versioned: the client states [`PROTOCOL_VERSION`] in its
//! [`ClientHello`] (the payload of the Noise handshake) and the server answers with its own
//! version in [`ServerHello`]; a server refuses versions it does not speak with a clear error.
//! Unknown JSON fields are ignored, so adding optional fields is a compatible change.
//!
//! A connection carries, in order:
//! 1. optionally one [`ClientMessage::Register`] answered by [`ServerMessage::Register`];
//! 2. optionally one [`ClientMessage::StartSession`], after which the server pushes a
//!    [`ServerMessage::NetMap`] at once and again on every change that affects the node, and the
//!    node sends [`ClientMessage::Update`]s (endpoints, health, advertised routes) and
//!    [`ClientMessage::KeepAlive`]s. Either side closes a session that stays silent for three
//!    keepalive intervals.
//!
//! Fatal problems are reported with [`ServerMessage::Error`] before the server closes.
//!
//! Keys travel as standard base64 (as `wg` prints them), prefixes as `a.b.c.d/n`, endpoints as
//! `ip:port`, times as Unix seconds.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::wg::Key;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest hostname accepted (a DNS label).
pub const MAX_HOSTNAME_LEN: usize = 63;
/// Most endpoints a node may report.
pub const MAX_ENDPOINTS: usize = 64;
/// Most routes a node may advertise.
pub const MAX_ROUTES: usize = 1024;
/// Longest free-text field (OS name, health detail).
pub const MAX_TEXT_LEN: usize = 256;

/// The CGNAT range tailnet IPv4 addresses come from.
pub const TAILNET_V4: ipnet::Ipv4Net = ipnet::Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10);
/// The ULA range tailnet IPv6 addresses come from.
pub const TAILNET_V6: ipnet::Ipv6Net =
    ipnet::Ipv6Net::new_assert(Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0), 48);
/// The MagicDNS / internal-services address, never given to a node.
pub const QUAD100: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 100);

/// Serde helpers for [`Key`] as standard base64.
pub mod key_b64 {
    use super::Key;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes a key as base64.
    pub fn serialize<S: Serializer>(k: &Key, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&k.to_base64())
    }

    /// Deserializes a base64 key.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        let s = String::deserialize(d)?;
        Key::from_base64(&s).map_err(|e| serde::de::Error::custom(format!("key: {e}")))
    }
}

/// The first message of a connection, carried in the Noise handshake's first payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    /// [`PROTOCOL_VERSION`] of the client.
    pub version: u32,
}

/// The server's answer to [`ClientHello`], carried in the Noise handshake's second payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHello {
    /// [`PROTOCOL_VERSION`] of the server.
    pub version: u32,
    /// Set when the server will not talk to this client (unsupported version); it closes next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a node tells the server about itself; sent on registration and whenever it changes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Hostinfo {
    /// Requested hostname; the server makes it a unique DNS label (`name`, `name-1`, …).
    pub hostname: String,
    /// Operating system, free text (`linux`, `debian 13`, …).
    #[serde(default)]
    pub os: String,
    /// Subnet routes the node offers (`--advertise-routes`). `0.0.0.0/0` / `::/0` here are
    /// treated as an exit-node offer.
    #[serde(default)]
    pub advertised_routes: Vec<IpNet>,
    /// The node offers to be an exit node (`--advertise-exit-node`).
    #[serde(default)]
    pub advertise_exit_node: bool,
    /// HA preference among routers for the same prefix (`--route-priority`):
    /// **higher is preferred**; 0 is the default.
    #[serde(default)]
    pub route_priority: u32,
    /// The UDP port of the peer relay the node runs (`--advertise-peer-relay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_relay_port: Option<u16>,
}

/// Registration of a machine (identified by the Noise static key of its connection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The auth key; may be omitted by a machine that is registered and not expired (key
    /// rotation, hostinfo refresh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_key: Option<String>,
    /// The node's WireGuard public key. A different key than the registered one is a key
    /// rotation: peers learn the new key from their next netmap.
    #[serde(with = "key_b64")]
    pub node_key: Key,
    /// Hostname, OS and route offers.
    pub hostinfo: Hostinfo,
}

/// Why a registration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// A single-use key that was already used by another machine.
    AuthKeyUsed,
    /// The key's expiry has passed.
    AuthKeyExpired,
    /// No such key (or malformed, or revoked).
    UnknownAuthKey,
    /// The machine is not registered (or its node key expired) and no auth key was given.
    AuthKeyRequired,
    /// The request is malformed (bad hostname, too many routes, …).
    BadRequest,
    /// The server failed (store error); try again.
    Internal,
}

impl RefusalCode {
    /// The human sentence for this code.
    pub fn message(self) -> &'static str {
        match self {
            RefusalCode::AuthKeyUsed => "auth key already used",
            RefusalCode::AuthKeyExpired => "auth key expired",
            RefusalCode::UnknownAuthKey => "unknown auth key",
            RefusalCode::AuthKeyRequired => "an auth key is required to register this machine",
            RefusalCode::BadRequest => "bad registration request",
            RefusalCode::Internal => "internal server error",
        }
    }
}

/// A refused registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// Machine-readable reason.
    pub code: RefusalCode,
    /// Human-readable reason; starts with [`RefusalCode::message`].
    pub message: String,
}

impl Refusal {
    /// A refusal with the code's standard message.
    pub fn new(code: RefusalCode) -> Refusal {
        Refusal {
            code,
            message: code.message().to_string(),
        }
    }

    /// A refusal with extra detail after the standard message.
    pub fn detail(code: RefusalCode, detail: impl fmt::Display) -> Refusal {
        Refusal {
            code,
            message: format!("{}: {detail}", code.message()),
        }
    }
}

/// A successful registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The node's id, stable for the life of the registration.
    pub node_id: u64,
    /// The unique hostname the server assigned (may differ from the requested one).
    pub name: String,
    /// `name.domain`.
    pub fqdn: String,
    /// The node's tailnet IPv4 address (in 100.64.0.0/10, never 100.100.100.100).
    pub ipv4: Ipv4Addr,
    /// The node's tailnet IPv6 address (in fd7a:115c:a1e0::/48).
    pub ipv6: Ipv6Addr,
    /// When the node key expires (Unix seconds); `None` for never.
    pub key_expiry: Option<u64>,
    /// The tailnet's DNS domain.
    pub domain: String,
    /// The owning user.
    pub user: String,
    /// ACL tags from the auth key.
    pub tags: Vec<String>,
    /// The node is deleted soon after it goes offline.
    pub ephemeral: bool,
}

/// The server's answer to [`RegisterRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterResponse {
    /// Registered (or re-registered).
    Registered(Registration),
    /// Refused, with the reason.
    Refused(Refusal),
}

/// The LAN side's health as the node's probe sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The LAN probe succeeds. A router whose probe fails loses its primaries at once.
    pub lan_ok: bool,
    /// Optional detail (`ping 192.168.1.1: timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            lan_ok: true,
            detail: None,
        }
    }
}

/// Changes a node reports; absent fields are unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeUpdate {
    /// The UDP endpoints where peers can reach the node's WireGuard socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<SocketAddr>>,
    /// LAN health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// New hostinfo (route advertisement, priority or exit-node offer changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostinfo: Option<Hostinfo>,
    /// The relay region where the node can be reached (its home relay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_region: Option<u32>,
}

/// A message from the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Register or re-register this machine.
    Register(RegisterRequest),
    /// Start the streaming session with the node's current state.
    StartSession(NodeUpdate),
    /// Something changed.
    Update(NodeUpdate),
    /// Nothing changed; the node is alive.
    KeepAlive,
}

/// Why the server ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The machine is not registered (or was deleted): register with an auth key.
    NotRegistered,
    /// The node key expired (or an admin expired it): register again with an auth key.
    NodeExpired,
    /// A message arrived out of order or was invalid.
    Protocol,
    /// Another connection of the same machine took over its session.
    Replaced,
    /// The server is shutting down.
    ShuttingDown,
    /// Server-side failure.
    Internal,
}

/// A fatal error the server reports before closing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ServerError {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: String,
}

/// A message from the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The answer to [`ClientMessage::Register`].
    Register(RegisterResponse),
    /// The current network map; replaces the previous one entirely.
    NetMap(Box<NetMap>),
    /// Nothing changed; the server is alive. `interval_ms` is the keepalive interval the
    /// server expects from the node.
    KeepAlive {
        /// Send a keepalive at least this often (milliseconds).
        interval_ms: u64,
    },
    /// Fatal error; the server closes the connection.
    Error(ServerError),
}

/// One advertised route of a node, as seen in a netmap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteState {
    /// The prefix.
    pub prefix: IpNet,
    /// Approved by an admin or an `autoApprovers` rule. Peers only see approved routes.
    pub approved: bool,
    /// This node is the primary router for the prefix (always false for exit routes, which
    /// every client picks for itself).
    pub primary: bool,
}

/// A node as the netmap describes it (the receiving node itself or a peer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// Stable id.
    pub id: u64,
    /// Unique hostname (DNS label).
    pub name: String,
    /// `name.domain`.
    pub fqdn: String,
    /// WireGuard public key.
    #[serde(with = "key_b64")]
    pub node_key: Key,
    /// Where its WireGuard socket can be reached.
    pub endpoints: Vec<SocketAddr>,
    /// The relay region where it can be reached (its home relay), if it reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_region: Option<u32>,
    /// The UDP port of the peer relay it runs, at the IP of its first endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_relay_port: Option<u16>,
    /// Its tailnet addresses (`/32` and `/128`).
    pub addresses: Vec<IpNet>,
    /// What a peer puts in WireGuard allowed IPs: its addresses, the approved routes it is
    /// primary for and, when approved and offered, the exit routes.
    pub allowed_ips: Vec<IpNet>,
    /// Its routes: for peers the approved ones (primary or standby); for the node itself every
    /// advertised route with its approval state.
    pub routes: Vec<RouteState>,
    /// It offers exit-node service and that is approved.
    pub exit_node: bool,
    /// HA priority (higher is preferred).
    pub route_priority: u32,
    /// A session is connected (or disconnected for less than the offline grace).
    pub online: bool,
    /// Last connect or disconnect (Unix seconds).
    pub last_seen: Option<u64>,
    /// Operating system, as reported.
    pub os: String,
    /// The owning user.
    pub user: String,
    /// ACL tags.
    pub tags: Vec<String>,
    /// Node-key expiry (Unix seconds).
    pub key_expiry: Option<u64>,
    /// Its LAN probe succeeds (as last reported).
    pub lan_ok: bool,
    /// Ephemeral node.
    pub ephemeral: bool,
}

impl NodeView {
    /// A minimal online node for tests: `name`, `addresses`, everything else empty.
    #[cfg(test)]
    pub(crate) fn for_tests(id: u64, name: &str, addresses: &[&str]) -> NodeView {
        NodeView {
            id,
            name: name.into(),
            fqdn: format!("{name}.tailnet.example"),
            node_key: Key::from([id as u8; 32]),
            endpoints: vec![],
            relay_region: None,
            peer_relay_port: None,
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            allowed_ips: vec![],
            routes: vec![],
            exit_node: false,
            route_priority: 0,
            online: true,
            last_seen: None,
            os: "linux".into(),
            user: "u".into(),
            tags: vec![],
            key_expiry: None,
            lan_ok: true,
            ephemeral: false,
        }
    }

    /// The tailnet IPv4 address, if any.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.addresses.iter().find_map(|a| match a.addr() {
            IpAddr::V4(v) => Some(v),
            IpAddr::V6(_) => None,
        })
    }

    /// The tailnet IPv6 address, if any.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.addresses.iter().find_map(|a| match a.addr() {
            IpAddr::V6(v) => Some(v),
            IpAddr::V4(_) => None,
        })
    }

    /// Approved routes this node is primary for.
    pub fn primary_routes(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.routes
            .iter()
            .filter(|r| r.approved && r.primary)
            .map(|r| r.prefix)
    }
}

/// A destination of a [`FilterRule`]: a prefix and an inclusive port range (ports only
/// restrict TCP, UDP and SCTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DstPorts {
    /// Destination prefix.
    pub net: IpNet,
    /// First port.
    pub first: u16,
    /// Last port.
    pub last: u16,
}

/// One rule of a node's packet filter, compiled from a policy `acls` entry: packets from any
/// `src` prefix to any `dst` with one of `protos` are accepted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FilterRule {
    /// Position of the `acls` entry in the policy (for counters).
    pub acl: u32,
    /// Source prefixes.
    pub src: Vec<IpNet>,
    /// Destinations.
    pub dst: Vec<DstPorts>,
    /// IP protocol numbers; empty for TCP, UDP, ICMP and ICMPv6.
    pub protos: Vec<u8>,
}

/// DNS settings for the tailnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    /// The tailnet domain; peers are `name.domain`.
    pub domain: String,
}

/// The network map pushed to a node: itself, its peers and DNS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetMap {
    /// Increases with every change the server makes (compare for equality; across server
    /// restarts it is seeded from the clock).
    pub version: u64,
    /// The receiving node.
    pub self_node: NodeView,
    /// Every other node that is not expired, ordered by id.
    pub peers: Vec<NodeView>,
    /// DNS settings.
    pub dns: DnsConfig,
    /// The keepalive interval the server expects (milliseconds).
    pub keepalive_interval_ms: u64,
    /// The packet filter for traffic to this node (and through it, for its routes):
    /// `None` allows everything (the policy has no `acls`), `Some` denies what no rule
    /// accepts.
    #[serde(default)]
    pub packet_filter: Option<Vec<FilterRule>>,
    /// The relay servers nodes may use (`None`: no relays configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_map: Option<crate::derp::map::RelayMap>,
}

impl NetMap {
    /// The peer with this id.
    pub fn peer(&self, id: u64) -> Option<&NodeView> {
        self.peers.iter().find(|p| p.id == id)
    }

    /// The peer with this name.
    pub fn peer_by_name(&self, name: &str) -> Option<&NodeView> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// The primary router among peers for `prefix`, if any.
    pub fn primary_for(&self, prefix: &IpNet) -> Option<&NodeView> {
        self.peers
            .iter()
            .find(|p| p.routes.iter().any(|r| r.primary && &r.prefix == prefix))
    }

    /// Route advertisements for the node's route table ([`crate::route::table::RouteTable`]):
    /// every peer's approved routes, ranked so that the primary comes first (rank 0) and
    /// standbys follow by descending priority (`rank = 1 + (u32::MAX - priority)`, saturating),
    /// plus the peers' tailnet addresses at rank 0. Exit routes are included for peers whose
    /// offer is approved; the route table only uses the exit node the user picked.
    pub fn adverts(&self) -> Vec<crate::route::table::Advert<u64>> {
        let mut out = Vec::new();
        for p in &self.peers {
            for a in &p.addresses {
                out.push(crate::route::table::Advert {
                    prefix: *a,
                    peer: p.id,
                    rank: 0,
                });
            }
            for r in p.routes.iter().filter(|r| r.approved) {
                let rank = if r.primary {
                    0
                } else {
                    (u32::MAX - p.route_priority).saturating_add(1)
                };
                out.push(crate::route::table::Advert {
                    prefix: r.prefix,
                    peer: p.id,
                    rank,
                });
            }
        }
        out
    }
}

/// Why a received message could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Not valid JSON for the expected message type.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Parses a message from the node, never panicking on bad input.
pub fn decode_client_message(bytes: &[u8]) -> Result<ClientMessage, ProtoError> {
    serde_json::from_slice(bytes).map_err(|e| ProtoError::Malformed(e.to_string()))
}

/// Parses a message from the server, never panicking on bad input.
pub fn decode_server_message(bytes: &[u8]) -> Result<ServerMessage, ProtoError> {
    serde_json::from_slice(bytes).map_err(|e| ProtoError::Malformed(e.to_string()))
}

/// Normalizes a requested hostname into a DNS label: lowercase ASCII letters, digits and
/// `-`, at most [`MAX_HOSTNAME_LEN`] characters, no leading/trailing `-`. Other characters
/// become `-`; an empty result becomes `node`.
pub fn sanitize_hostname(requested: &str) -> String {
    let first = requested.split('.').next().unwrap_or_default();
    let mut out = String::with_capacity(first.len().min(MAX_HOSTNAME_LEN));
    for c in first.chars() {
        if out.len() >= MAX_HOSTNAME_LEN {
            break;
        }
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed = out.trim_matches('-');
    if trimmed.is_empty() {
        "node".to_string()
    } else {
        trimmed.to_string()
    }
}

/// Checks a node's hostinfo for sizes and values the server accepts.
pub fn validate_hostinfo(h: &Hostinfo) -> Result<(), String> {
    if h.hostname.len() > 255 {
        return Err("hostname longer than 255 bytes".into());
    }
    if h.os.len() > MAX_TEXT_LEN {
        return Err(format!("os longer than {MAX_TEXT_LEN} bytes"));
    }
    if h.advertised_routes.len() > MAX_ROUTES {
        return Err(format!("more than {MAX_ROUTES} advertised routes"));
    }
    if h.peer_relay_port == Some(0) {
        return Err("peer relay port 0".into());
    }
    Ok(())
}

/// Checks a node update for sizes the server accepts.
pub fn validate_update(u: &NodeUpdate) -> Result<(), String> {
    if let Some(e) = &u.endpoints {
        if e.len() > MAX_ENDPOINTS {
            return Err(format!("more than {MAX_ENDPOINTS} endpoints"));
        }
    }
    if let Some(h) = &u.health {
        if h.detail.as_ref().is_some_and(|d| d.len() > MAX_TEXT_LEN) {
            return Err(format!("health detail longer than {MAX_TEXT_LEN} bytes"));
        }
    }
    if let Some(h) = &u.hostinfo {
        validate_hostinfo(h)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn register_round_trip_and_wire_shape() {
        let key = Key::generate_private().public_key();
        let msg = ClientMessage::Register(RegisterRequest {
            auth_key: Some("tgkey-abc".into()),
            node_key: key,
            hostinfo: Hostinfo {
                hostname: "router-a".into(),
                os: "linux".into(),
                advertised_routes: vec!["192.168.1.0/24".parse().unwrap()],
                advertise_exit_node: true,
                route_priority: 10,
                peer_relay_port: None,
            },
        });
        let json = serde_json::to_string(&msg).unwrap();
        assert!(json.contains(r#""type":"register""#), "{json}");
        assert!(json.contains(&key.to_base64()));
        assert!(json.contains("192.168.1.0/24"));
        assert_eq!(decode_client_message(json.as_bytes()).unwrap(), msg);
    }

    #[test]
    fn refusal_messages_are_exact() {
        assert_eq!(
            Refusal::new(RefusalCode::AuthKeyUsed).to_string(),
            "auth key already used"
        );
        assert_eq!(
            Refusal::new(RefusalCode::AuthKeyExpired).to_string(),
            "auth key expired"
        );
        assert_eq!(
            Refusal::new(RefusalCode::UnknownAuthKey).to_string(),
            "unknown auth key"
        );
        let r = ServerMessage::Register(RegisterResponse::Refused(Refusal::new(
            RefusalCode::AuthKeyUsed,
        )));
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(decode_server_message(json.as_bytes()).unwrap(), r);
    }

    #[test]
    fn keepalive_and_unknown_fields() {
        let m = decode_client_message(br#"{"type":"keep_alive","future":1}"#).unwrap();
        assert_eq!(m, ClientMessage::KeepAlive);
        assert!(decode_client_message(br#"{"type":"nope"}"#).is_err());
        assert!(decode_client_message(b"").is_err());
        assert!(decode_client_message(br#"{"type":"register","node_key":"AAAA"}"#).is_err());
    }

    #[test]
    fn hostnames_are_sanitized() {
        assert_eq!(sanitize_hostname("Router_A.local"), "router-a");
        assert_eq!(sanitize_hostname("--"), "node");
        assert_eq!(sanitize_hostname(""), "node");
        assert_eq!(sanitize_hostname("héllo wörld"), "h-llo-w-rld");
        assert_eq!(sanitize_hostname(&"a".repeat(100)).len(), MAX_HOSTNAME_LEN);
    }

    #[test]
    fn adverts_rank_primary_first_then_priority() {
        let k = Key::generate_private().public_key();
        let prefix: IpNet = "192.168.1.0/24".parse().unwrap();
        let node = |id: u64, prio: u32, primary: bool| NodeView {
            id,
            name: format!("n{id}"),
            fqdn: format!("n{id}.t"),
            node_key: k,
            endpoints: vec![],
            relay_region: None,
            peer_relay_port: None,
            addresses: vec![format!("100.64.0.{id}/32").parse().unwrap()],
            allowed_ips: vec![],
            routes: vec![RouteState {
                prefix,
                approved: true,
                primary,
            }],
            exit_node: false,
            route_priority: prio,
            online: true,
            last_seen: None,
            os: String::new(),
            user: "u".into(),
            tags: vec![],
            key_expiry: None,
            lan_ok: true,
            ephemeral: false,
        };
        let nm = NetMap {
            version: 1,
            self_node: node(9, 0, false),
            peers: vec![node(1, 5, false), node(2, 1, true), node(3, 100, false)],
            dns: DnsConfig { domain: "t".into() },
            keepalive_interval_ms: 1000,
            packet_filter: None,
            relay_map: None,
        };
        let ranks: Vec<(u64, u32)> = nm
            .adverts()
            .into_iter()
            .filter(|a| a.prefix == prefix)
            .map(|a| (a.peer, a.rank))
            .collect();
        let r = |id| ranks.iter().find(|(p, _)| *p == id).unwrap().1;
        assert_eq!(r(2), 0);
        assert!(r(3) < r(1));
        assert!(r(3) > 0);
        assert_eq!(nm.primary_for(&prefix).unwrap().id, 2);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_client_message(&bytes);
            let _ = decode_server_message(&bytes);
        }

        #[test]
        fn parsers_never_panic_on_jsonish(s in r#"\{("type":"(register|update|start_session|keep_alive|net_map)",?)?("[a-z_]{1,12}":(null|[0-9]{1,3}|"[A-Za-z0-9+/=./:]{0,48}"|\[\]|\{\}),?){0,6}\}"#) {
            let _ = decode_client_message(s.as_bytes());
            let _ = decode_server_message(s.as_bytes());
        }

        #[test]
        fn sanitized_hostnames_are_labels(s in ".{0,80}") {
            let h = sanitize_hostname(&s);
            prop_assert!(!h.is_empty() && h.len() <= MAX_HOSTNAME_LEN);
            prop_assert!(h.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
            prop_assert!(!h.starts_with('-') && !h.ends_with('-'));
        }
    }
}
