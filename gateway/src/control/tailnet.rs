//! The coordination server's core: the tailnet's nodes, sessions, routes and primaries, with
//! every rule of the control plane and no network I/O.
//!
//! [`Tailnet`] is a synchronous state machine driven by the server's tasks (one per node
//! connection, one timer, one admin socket) under a mutex. Every entry point takes `now`, so
//! the unit tests run on a synthetic clock. Durable state goes through [`Store`] *before* the
//! in-memory model changes, so a failed write never leaves the two apart. After every change
//! [`Tailnet`] recomputes the primaries and the netmap of every connected node and pushes the
//! netmaps that differ from what the node last got through a `watch` channel (latest value
//! wins, so a slow node never builds a backlog).
//!
//! Liveness: a node is *connected* while it has a session; it shows as `online` until the
//! offline grace after its session ends (so brief reconnects don't flap the flag peers see).
//! Primaries do not wait for that grace: a router whose session ends, whose LAN probe fails or
//! whose key expires loses its primaries at once (see [`super::election`]). After a server
//! restart the primaries persisted in the store are kept through the startup grace even before
//! their routers reconnect, so a restart does not move traffic.
//!
//! Ephemeral nodes are deleted once they have been disconnected for the ephemeral grace.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use ipnet::IpNet;
use rand_core::{OsRng, RngCore};
use tokio::sync::watch;

use super::acl::{self, AclNode};
use super::admin::{
    AdminRequest, AdminResponse, AuthKeyInfo, CreatedAuthKey, NodeInfo, RouteInfo, ServerInfo,
    UserInfo,
};
use super::election::{self, Candidate};
use super::policy::{is_exit_route, Owner, Policy};
use super::proto::FilterRule;
use super::proto::{
    sanitize_hostname, validate_hostinfo, validate_update, DnsConfig, ErrorCode, Health, Hostinfo,
    NetMap, NodeUpdate, NodeView, Refusal, RefusalCode, RegisterRequest, RegisterResponse,
    Registration, RouteState, ServerError, MAX_ENDPOINTS, QUAD100, TAILNET_V6,
};
use super::store::{unix_now, unix_now_ms, AuthKeyRecord, NodeRecord, RouteRecord, Store};
use crate::derp::map::RelayMap;
use crate::wg::Key;

/// `0.0.0.0/0`.
const EXIT_V4: IpNet = crate::route::table::EXIT_V4;
/// `::/0`.
const EXIT_V6: IpNet = crate::route::table::EXIT_V6;
/// Auth keys look like `tgkey-<12 hex id>-<48 hex secret>`.
const AUTH_KEY_PREFIX: &str = "tgkey-";

/// The `server_state` key the policy text is stored under.
pub const POLICY_STATE_KEY: &str = "policy";

/// What `tailgate control policy set` reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicySummary {
    /// `acls` entries; `None` when the policy has none (everything allowed).
    pub acls: Option<usize>,
    /// `tests` entries (all passed).
    pub tests: usize,
    /// `groups` entries.
    pub groups: usize,
}

impl PolicySummary {
    /// The summary of `p`.
    pub fn of(p: &Policy) -> PolicySummary {
        PolicySummary {
            acls: p.acl.rules.as_ref().map(Vec::len),
            tests: p.acl.tests.len(),
            groups: p.groups.len(),
        }
    }
}

/// Each node's packet filter, by node id; empty when the policy allows everything.
type PacketFilters = HashMap<u64, Option<Vec<FilterRule>>>;

/// Tunables of the control plane.
#[derive(Debug, Clone)]
pub struct TailnetConfig {
    /// The tailnet's DNS domain.
    pub domain: String,
    /// How long a returning higher-priority router waits before taking its primaries back.
    pub hold_down: Duration,
    /// How long a node still shows as online after its session ends.
    pub offline_grace: Duration,
    /// How long an ephemeral node may stay disconnected before it is deleted.
    pub ephemeral_grace: Duration,
    /// After a restart, how long persisted primaries keep their role while their routers
    /// reconnect.
    pub startup_grace: Duration,
    /// The keepalive interval nodes are asked to keep (sessions silent for three intervals are
    /// closed).
    pub keepalive: Duration,
    /// Node-key lifetime for untagged nodes (`None`: never expire). Tagged nodes never expire,
    /// like Tailscale's.
    pub node_key_expiry: Option<Duration>,
    /// Default auth-key lifetime.
    pub auth_key_expiry: Duration,
    /// The user that `authkey create` uses (and creates) when none is named.
    pub default_user: String,
    /// The policy (access rules, autoApprovers).
    pub policy: Policy,
    /// The file the policy came from (`--policy`); `policy set` writes the new one there too.
    pub policy_file: Option<std::path::PathBuf>,
    /// The relay map before the policy's `derpMap` (`--derp-map`).
    pub relay_map: RelayMap,
}

impl Default for TailnetConfig {
    fn default() -> Self {
        TailnetConfig {
            domain: "tailnet.internal".into(),
            hold_down: Duration::from_secs(30),
            offline_grace: Duration::from_secs(5),
            ephemeral_grace: Duration::from_secs(30),
            startup_grace: Duration::from_secs(15),
            keepalive: Duration::from_secs(2),
            node_key_expiry: Some(Duration::from_secs(180 * 86400)),
            auth_key_expiry: Duration::from_secs(90 * 86400),
            default_user: "default".into(),
            policy: Policy::default(),
            relay_map: RelayMap::default(),
            policy_file: None,
        }
    }
}

/// What a session task receives.
#[derive(Debug, Clone)]
pub enum Push {
    /// Nothing yet.
    None,
    /// A new netmap for the node.
    NetMap(Arc<NetMap>),
    /// Close the session with this error.
    Close(ServerError),
}

/// A session's claim: which node, which generation, and where its pushes arrive.
#[derive(Debug)]
pub struct SessionTicket {
    /// The node.
    pub node_id: u64,
    /// Distinguishes this session from earlier ones of the same node.
    pub generation: u64,
    /// Netmaps and close requests.
    pub pushes: watch::Receiver<Push>,
}

#[derive(Debug, Default)]
struct Live {
    /// The generation of the connected session.
    session: Option<u64>,
    /// After a disconnect: shown online until then.
    online_until: Option<Instant>,
    /// Disconnected since (for ephemeral deletion); `None` while connected.
    offline_since: Option<Instant>,
    /// Has had a session since the server started.
    seen_since_start: bool,
    endpoints: Vec<SocketAddr>,
    relay_region: Option<u32>,
    /// The peer relay port its hostinfo offers (live: it runs while the node does).
    peer_relay_port: Option<u16>,
    health: Health,
    eligible_since: Option<Instant>,
}

#[derive(Debug)]
struct Node {
    rec: NodeRecord,
    live: Live,
}

struct SessionSlot {
    generation: u64,
    tx: watch::Sender<Push>,
    last: Option<NetMap>,
}

/// The tailnet state machine.
pub struct Tailnet {
    cfg: TailnetConfig,
    store: Store,
    server_key: Key,
    login_url: String,
    listen: String,
    nodes: BTreeMap<u64, Node>,
    primaries: BTreeMap<IpNet, u64>,
    recheck_at: Option<Instant>,
    sessions: HashMap<u64, SessionSlot>,
    next_generation: u64,
    version: u64,
    started: Instant,
}

fn server_error(code: ErrorCode, message: impl Into<String>) -> ServerError {
    ServerError {
        code,
        message: message.into(),
    }
}

/// The relay map nodes get: the base map with the policy's `derpMap` applied.
pub(super) fn relay_map_of(base: &RelayMap, policy: &Policy) -> Result<RelayMap> {
    match &policy.derp_map {
        None => Ok(base.clone()),
        Some(patch) => base
            .patched(patch)
            .map_err(|e| anyhow!("policy: derpMap on the server's relay map: {}", e.0)),
    }
}

fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The IPv6 address that goes with a tailnet IPv4 address: the IPv4 in the low 32 bits of
/// `fd7a:115c:a1e0::/48` (`100.64.0.1` → `fd7a:115c:a1e0::6440:1`).
pub fn ipv6_for(v4: Ipv4Addr) -> Ipv6Addr {
    let o = v4.octets();
    let base = TAILNET_V6.network().segments();
    Ipv6Addr::new(
        base[0],
        base[1],
        base[2],
        0,
        0,
        0,
        u16::from_be_bytes([o[0], o[1]]),
        u16::from_be_bytes([o[2], o[3]]),
    )
}

/// The lowest free address in 100.64.0.0/10, skipping `.0`, `.255` and 100.100.100.100.
pub fn allocate_ipv4(used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let net = super::proto::TAILNET_V4;
    let start = u32::from(net.network()) + 1;
    let end = u32::from(net.broadcast());
    (start..end).map(Ipv4Addr::from).find(|a| {
        let last = a.octets()[3];
        last != 0 && last != 255 && *a != QUAD100 && !used.contains(a)
    })
}

/// The set of prefixes a hostinfo advertises (exit offers as `0.0.0.0/0` + `::/0`).
pub fn advertised_set(h: &Hostinfo) -> BTreeSet<IpNet> {
    let mut out = BTreeSet::new();
    for r in &h.advertised_routes {
        let r = r.trunc();
        if is_exit_route(&r) {
            out.insert(EXIT_V4);
            out.insert(EXIT_V6);
        } else {
            out.insert(r);
        }
    }
    if h.advertise_exit_node {
        out.insert(EXIT_V4);
        out.insert(EXIT_V6);
    }
    out
}

/// Merges a new advertisement into a node's routes: new prefixes are added (auto-approved when
/// the policy says so), withdrawn ones lose `advertised` and disappear unless approved.
pub fn merge_routes(
    existing: &[RouteRecord],
    desired: &BTreeSet<IpNet>,
    policy: &Policy,
    owner: Owner<'_>,
    now_ms: u64,
) -> Vec<RouteRecord> {
    let mut out: Vec<RouteRecord> = Vec::new();
    for r in existing {
        let mut r = r.clone();
        if desired.contains(&r.prefix) {
            if !r.advertised {
                r.advertised = true;
                r.advertised_at = now_ms;
            }
        } else {
            r.advertised = false;
            r.primary = false;
        }
        if r.advertised && !r.approved && policy.auto_approves(&r.prefix, owner) {
            r.approved = true;
        }
        if r.advertised || r.approved {
            out.push(r);
        }
    }
    for d in desired {
        if !out.iter().any(|r| &r.prefix == d) {
            out.push(RouteRecord {
                prefix: *d,
                advertised: true,
                approved: policy.auto_approves(d, owner),
                primary: false,
                advertised_at: now_ms,
            });
        }
    }
    out.sort_by_key(|r| r.prefix);
    out
}

fn validate_tag(t: &str) -> Result<()> {
    let Some(name) = t.strip_prefix("tag:") else {
        return Err(anyhow!("tag {t:?} must look like tag:NAME"));
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(anyhow!(
            "tag {t:?}: NAME may only contain letters, digits, - and _"
        ));
    }
    Ok(())
}

impl Tailnet {
    /// Loads the tailnet from `store`. `now` starts the startup grace.
    pub fn new(mut store: Store, cfg: TailnetConfig, now: Instant) -> Result<Tailnet> {
        let server_key = store.server_private_key()?;
        let mut nodes = BTreeMap::new();
        let mut primaries = BTreeMap::new();
        for rec in store.load_nodes()? {
            for r in rec.routes.iter().filter(|r| r.primary) {
                primaries.insert(r.prefix, rec.id);
            }
            nodes.insert(
                rec.id,
                Node {
                    live: Live {
                        offline_since: Some(now),
                        ..Live::default()
                    },
                    rec,
                },
            );
        }
        let mut t = Tailnet {
            cfg,
            store,
            server_key,
            login_url: String::new(),
            listen: String::new(),
            nodes,
            primaries,
            recheck_at: None,
            sessions: HashMap::new(),
            next_generation: 1,
            version: unix_now_ms(),
            started: now,
        };
        // The policy may have changed while the server was down.
        let ids: Vec<u64> = t.nodes.keys().copied().collect();
        for id in ids {
            if let Err(e) = t.reapply_policy(id) {
                log::warn!("re-applying autoApprovers to node {id}: {e:#}");
            }
        }
        Ok(t)
    }

    /// The server's Noise private key.
    pub fn server_private_key(&self) -> Key {
        self.server_key
    }

    /// Records how nodes reach the server, for `info`.
    pub fn set_endpoint_info(&mut self, listen: String, login_url: String) {
        self.listen = listen;
        self.login_url = login_url;
    }

    /// The configuration.
    pub fn config(&self) -> &TailnetConfig {
        &self.cfg
    }

    fn owner(rec: &NodeRecord) -> Owner<'_> {
        Owner {
            user: &rec.user,
            tags: &rec.tags,
        }
    }

    fn reapply_policy(&mut self, id: u64) -> Result<()> {
        let Some(node) = self.nodes.get(&id) else {
            return Ok(());
        };
        let advertised: BTreeSet<IpNet> = node
            .rec
            .routes
            .iter()
            .filter(|r| r.advertised)
            .map(|r| r.prefix)
            .collect();
        let merged = merge_routes(
            &node.rec.routes,
            &advertised,
            &self.cfg.policy,
            Self::owner(&node.rec),
            unix_now_ms(),
        );
        if merged != node.rec.routes {
            self.store.tx(|tx| Store::replace_routes(tx, id, &merged))?;
            if let Some(n) = self.nodes.get_mut(&id) {
                n.rec.routes = merged;
            }
        }
        Ok(())
    }

    fn node_by_machine(&self, machine: &Key) -> Option<u64> {
        self.nodes
            .values()
            .find(|n| &n.rec.machine_key == machine)
            .map(|n| n.rec.id)
    }

    fn unique_name(&self, base: &str, exclude: Option<u64>) -> String {
        let taken = |name: &str| {
            self.nodes
                .values()
                .any(|n| Some(n.rec.id) != exclude && n.rec.name.eq_ignore_ascii_case(name))
        };
        if !taken(base) {
            return base.to_string();
        }
        (1u64..)
            .map(|i| {
                let suffix = format!("-{i}");
                let keep = super::proto::MAX_HOSTNAME_LEN.saturating_sub(suffix.len());
                let stem: String = base.chars().take(keep).collect();
                format!("{}{suffix}", stem.trim_end_matches('-'))
            })
            .find(|n| !taken(n))
            .unwrap_or_else(|| base.to_string())
    }

    fn check_auth_key(
        &self,
        key: &str,
        existing: Option<u64>,
        unix: u64,
    ) -> Result<AuthKeyRecord, Refusal> {
        let unknown = || Refusal::new(RefusalCode::UnknownAuthKey);
        let rest = key
            .trim()
            .strip_prefix(AUTH_KEY_PREFIX)
            .ok_or_else(unknown)?;
        let (id, secret) = rest.split_once('-').ok_or_else(unknown)?;
        let rec = self
            .store
            .auth_key(id)
            .map_err(|e| Refusal::detail(RefusalCode::Internal, e))?
            .ok_or_else(unknown)?;
        if !ct_eq(&sha256(secret.as_bytes()), &rec.secret_hash) {
            return Err(unknown());
        }
        if rec.revoked {
            return Err(Refusal::detail(
                RefusalCode::UnknownAuthKey,
                "it was revoked",
            ));
        }
        if !rec.reusable && rec.used_by.is_some() && rec.used_by != existing {
            return Err(Refusal::new(RefusalCode::AuthKeyUsed));
        }
        if rec.expires_at.is_some_and(|e| e <= unix) {
            return Err(Refusal::new(RefusalCode::AuthKeyExpired));
        }
        Ok(rec)
    }

    fn registration(&self, rec: &NodeRecord) -> Registration {
        Registration {
            node_id: rec.id,
            name: rec.name.clone(),
            fqdn: format!("{}.{}", rec.name, self.cfg.domain),
            ipv4: rec.ipv4,
            ipv6: rec.ipv6,
            key_expiry: rec.key_expiry,
            domain: self.cfg.domain.clone(),
            user: rec.user.clone(),
            tags: rec.tags.clone(),
            ephemeral: rec.ephemeral,
        }
    }

    /// Registers (or re-registers, or rotates the key of) the machine `machine`.
    pub fn register(
        &mut self,
        machine: &Key,
        req: &RegisterRequest,
        now: Instant,
    ) -> RegisterResponse {
        match self.register_inner(machine, req, now) {
            Ok(reg) => RegisterResponse::Registered(reg),
            Err(refusal) => {
                log::info!(
                    "registration of machine {} refused: {}",
                    machine.short(),
                    refusal.message
                );
                RegisterResponse::Refused(refusal)
            }
        }
    }

    fn register_inner(
        &mut self,
        machine: &Key,
        req: &RegisterRequest,
        now: Instant,
    ) -> Result<Registration, Refusal> {
        let bad = |d: String| Refusal::detail(RefusalCode::BadRequest, d);
        validate_hostinfo(&req.hostinfo).map_err(bad)?;
        if req.node_key.is_zero() {
            return Err(bad("the node key is all zeros".into()));
        }
        let internal = |e: anyhow::Error| Refusal::detail(RefusalCode::Internal, format!("{e:#}"));
        let unix = unix_now();
        let now_ms = unix_now_ms();
        let existing = self.node_by_machine(machine);
        let requested = sanitize_hostname(&req.hostinfo.hostname);
        let desired = advertised_set(&req.hostinfo);
        let id = match &req.auth_key {
            Some(key) => {
                let ak = self.check_auth_key(key, existing, unix)?;
                let key_expiry = if ak.tags.is_empty() {
                    self.cfg.node_key_expiry.map(|d| unix + d.as_secs())
                } else {
                    None
                };
                let mut rec = match existing.and_then(|id| self.nodes.get(&id)) {
                    Some(n) => n.rec.clone(),
                    None => {
                        let used: HashSet<Ipv4Addr> =
                            self.nodes.values().map(|n| n.rec.ipv4).collect();
                        let ipv4 = allocate_ipv4(&used).ok_or_else(|| {
                            Refusal::detail(RefusalCode::Internal, "address space exhausted")
                        })?;
                        NodeRecord {
                            id: 0,
                            machine_key: *machine,
                            node_key: req.node_key,
                            name: self.unique_name(&requested, None),
                            requested_name: requested.clone(),
                            user_id: ak.user_id,
                            user: ak.user.clone(),
                            tags: ak.tags.clone(),
                            ipv4,
                            ipv6: ipv6_for(ipv4),
                            os: String::new(),
                            ephemeral: ak.ephemeral,
                            route_priority: 0,
                            created_at: unix,
                            key_expiry,
                            last_seen: None,
                            auth_key_id: Some(ak.id),
                            routes: Vec::new(),
                        }
                    }
                };
                rec.node_key = req.node_key;
                rec.user_id = ak.user_id;
                rec.user = ak.user.clone();
                rec.tags = ak.tags.clone();
                rec.ephemeral = ak.ephemeral;
                rec.key_expiry = key_expiry;
                rec.auth_key_id = Some(ak.id);
                self.apply_hostinfo(&mut rec, &req.hostinfo, &requested, &desired, now_ms);
                let is_new = existing.is_none();
                let id = self
                    .store
                    .tx(|tx| {
                        let id = if is_new {
                            Store::insert_node(tx, &rec)?
                        } else {
                            Store::update_node(tx, &rec)?;
                            rec.id
                        };
                        Store::replace_routes(tx, id, &rec.routes)?;
                        if !ak.reusable {
                            Store::mark_auth_key_used(tx, ak.id, id, unix)?;
                        }
                        Ok(id)
                    })
                    .map_err(internal)?;
                rec.id = id;
                log::info!(
                    "{} node {} ({}, {}) user {} tags {:?} via key {}",
                    if is_new {
                        "registered"
                    } else {
                        "re-registered"
                    },
                    rec.name,
                    id,
                    rec.ipv4,
                    rec.user,
                    rec.tags,
                    ak.key_id
                );
                match self.nodes.get_mut(&id) {
                    Some(n) => n.rec = rec,
                    None => {
                        self.nodes.insert(
                            id,
                            Node {
                                rec,
                                live: Live {
                                    offline_since: Some(now),
                                    ..Live::default()
                                },
                            },
                        );
                    }
                }
                id
            }
            None => {
                let Some(id) = existing else {
                    return Err(Refusal::new(RefusalCode::AuthKeyRequired));
                };
                let Some(node) = self.nodes.get(&id) else {
                    return Err(Refusal::new(RefusalCode::AuthKeyRequired));
                };
                if node.rec.expired(unix) {
                    return Err(Refusal::detail(
                        RefusalCode::AuthKeyRequired,
                        "the node key expired",
                    ));
                }
                let mut rec = node.rec.clone();
                if rec.node_key != req.node_key {
                    log::info!(
                        "node {} ({id}) rotated its key {} → {}",
                        rec.name,
                        rec.node_key.short(),
                        req.node_key.short()
                    );
                    rec.node_key = req.node_key;
                    if rec.tags.is_empty() {
                        rec.key_expiry = self.cfg.node_key_expiry.map(|d| unix + d.as_secs());
                    }
                }
                self.apply_hostinfo(&mut rec, &req.hostinfo, &requested, &desired, now_ms);
                self.store
                    .tx(|tx| {
                        Store::update_node(tx, &rec)?;
                        Store::replace_routes(tx, id, &rec.routes)
                    })
                    .map_err(internal)?;
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.rec = rec;
                }
                id
            }
        };
        self.recompute(now);
        let rec = &self
            .nodes
            .get(&id)
            .ok_or_else(|| Refusal::detail(RefusalCode::Internal, "node vanished"))?
            .rec;
        Ok(self.registration(rec))
    }

    fn apply_hostinfo(
        &self,
        rec: &mut NodeRecord,
        h: &Hostinfo,
        requested: &str,
        desired: &BTreeSet<IpNet>,
        now_ms: u64,
    ) {
        if rec.requested_name != requested || rec.name.is_empty() {
            rec.name = self.unique_name(requested, (rec.id != 0).then_some(rec.id));
            rec.requested_name = requested.to_string();
        }
        rec.os = h.os.clone();
        rec.route_priority = h.route_priority;
        rec.routes = merge_routes(
            &rec.routes,
            desired,
            &self.cfg.policy,
            Owner {
                user: &rec.user,
                tags: &rec.tags,
            },
            now_ms,
        );
    }

    /// Starts the streaming session of `machine` with its current state.
    pub fn attach(
        &mut self,
        machine: &Key,
        update: &NodeUpdate,
        now: Instant,
    ) -> Result<SessionTicket, ServerError> {
        let id = self.node_by_machine(machine).ok_or_else(|| {
            server_error(
                ErrorCode::NotRegistered,
                "this machine is not registered (or was deleted): log in again with an auth key",
            )
        })?;
        let unix = unix_now();
        if self.nodes.get(&id).is_some_and(|n| n.rec.expired(unix)) {
            return Err(server_error(
                ErrorCode::NodeExpired,
                "node key expired: log in again with an auth key",
            ));
        }
        validate_update(update).map_err(|e| server_error(ErrorCode::Protocol, e))?;
        if let Some(old) = self.sessions.remove(&id) {
            let _ = old.tx.send(Push::Close(server_error(
                ErrorCode::Replaced,
                "another connection of this machine took over the session",
            )));
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let (tx, rx) = watch::channel(Push::None);
        self.sessions.insert(
            id,
            SessionSlot {
                generation,
                tx,
                last: None,
            },
        );
        if let Some(n) = self.nodes.get_mut(&id) {
            n.live.session = Some(generation);
            n.live.online_until = None;
            n.live.offline_since = None;
            n.live.seen_since_start = true;
            n.rec.last_seen = Some(unix);
            log::info!("node {} ({id}) connected", n.rec.name);
        }
        if let Err(e) = self.store.set_last_seen(id, unix) {
            log::warn!("recording last seen of node {id}: {e:#}");
        }
        if let Err(e) = self.apply_update(id, update) {
            log::warn!("node {id}: {e:#}");
        }
        self.recompute(now);
        Ok(SessionTicket {
            node_id: id,
            generation,
            pushes: rx,
        })
    }

    fn is_current(&self, id: u64, generation: u64) -> bool {
        self.sessions
            .get(&id)
            .is_some_and(|s| s.generation == generation)
    }

    /// Applies a node's update within its session.
    pub fn update(
        &mut self,
        id: u64,
        generation: u64,
        update: &NodeUpdate,
        now: Instant,
    ) -> Result<(), ServerError> {
        if !self.is_current(id, generation) {
            return Err(server_error(ErrorCode::Replaced, "session replaced"));
        }
        validate_update(update).map_err(|e| server_error(ErrorCode::Protocol, e))?;
        self.apply_update(id, update)
            .map_err(|e| server_error(ErrorCode::Internal, format!("{e:#}")))?;
        self.recompute(now);
        Ok(())
    }

    fn apply_update(&mut self, id: u64, update: &NodeUpdate) -> Result<()> {
        let Some(node) = self.nodes.get_mut(&id) else {
            return Ok(());
        };
        if let Some(eps) = &update.endpoints {
            let mut eps = eps.clone();
            eps.dedup();
            eps.truncate(MAX_ENDPOINTS);
            node.live.endpoints = eps;
        }
        if let Some(r) = update.relay_region {
            node.live.relay_region = Some(r);
        }
        if let Some(h) = &update.health {
            if h.lan_ok != node.live.health.lan_ok {
                log::info!(
                    "node {} ({id}) LAN health: {}{}",
                    node.rec.name,
                    if h.lan_ok { "ok" } else { "FAILED" },
                    h.detail
                        .as_deref()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                );
            }
            node.live.health = h.clone();
        }
        if let Some(h) = &update.hostinfo {
            node.live.peer_relay_port = h.peer_relay_port;
            let current = node.rec.clone();
            let mut rec = current.clone();
            let requested = sanitize_hostname(&h.hostname);
            self.apply_hostinfo(&mut rec, h, &requested, &advertised_set(h), unix_now_ms());
            if rec != current {
                self.store.tx(|tx| {
                    Store::update_node(tx, &rec)?;
                    Store::replace_routes(tx, id, &rec.routes)
                })?;
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.rec = rec;
                }
            }
        }
        Ok(())
    }

    /// Ends the session `generation` of node `id` (connection closed or timed out).
    pub fn detach(&mut self, id: u64, generation: u64, now: Instant) {
        if !self.is_current(id, generation) {
            return;
        }
        self.sessions.remove(&id);
        let unix = unix_now();
        if let Some(n) = self.nodes.get_mut(&id) {
            n.live.session = None;
            n.live.online_until = Some(now + self.cfg.offline_grace);
            n.live.offline_since = Some(now);
            n.rec.last_seen = Some(unix);
            log::info!("node {} ({id}) disconnected", n.rec.name);
        }
        if let Err(e) = self.store.set_last_seen(id, unix) {
            log::warn!("recording last seen of node {id}: {e:#}");
        }
        self.recompute(now);
    }

    /// Runs time-based transitions (offline grace, ephemeral deletion, hold-downs, expiry).
    pub fn tick(&mut self, now: Instant) {
        self.recompute(now);
    }

    /// The next instant [`Tailnet::tick`] has something to do, if any.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let unix = unix_now();
        let mut deadlines: Vec<Instant> = Vec::new();
        deadlines.extend(self.recheck_at);
        deadlines.push(self.started + self.cfg.startup_grace);
        for n in self.nodes.values() {
            deadlines.extend(n.live.online_until);
            if n.rec.ephemeral {
                if let Some(since) = n.live.offline_since {
                    deadlines.push(since + self.cfg.ephemeral_grace);
                }
            }
            if let Some(exp) = n.rec.key_expiry {
                if exp > unix {
                    deadlines.push(now + Duration::from_secs(exp - unix));
                }
            }
        }
        deadlines.into_iter().filter(|d| *d > now).min()
    }

    fn delete_node_inner(&mut self, id: u64, why: ServerError) -> Result<()> {
        self.store.delete_node(id)?;
        if let Some(n) = self.nodes.remove(&id) {
            log::info!("deleted node {} ({id}): {}", n.rec.name, why.message);
        }
        if let Some(s) = self.sessions.remove(&id) {
            let _ = s.tx.send(Push::Close(why));
        }
        self.primaries.retain(|_, p| *p != id);
        Ok(())
    }

    fn eligible(&self, n: &Node, unix: u64) -> bool {
        n.live.session.is_some() && n.live.health.lan_ok && !n.rec.expired(unix)
    }

    /// Recomputes primaries and pushes changed netmaps.
    fn recompute(&mut self, now: Instant) {
        let unix = unix_now();
        // Ephemeral nodes that stayed away too long.
        let due: Vec<u64> = self
            .nodes
            .values()
            .filter(|n| {
                n.rec.ephemeral
                    && n.live.session.is_none()
                    && n.live
                        .offline_since
                        .is_some_and(|s| now >= s + self.cfg.ephemeral_grace)
            })
            .map(|n| n.rec.id)
            .collect();
        for id in due {
            let why = server_error(ErrorCode::NotRegistered, "ephemeral node went offline");
            if let Err(e) = self.delete_node_inner(id, why) {
                log::warn!("deleting ephemeral node {id}: {e:#}");
            }
        }
        // Sessions of nodes whose key expired.
        let expired: Vec<u64> = self
            .sessions
            .keys()
            .filter(|id| self.nodes.get(id).is_none_or(|n| n.rec.expired(unix)))
            .copied()
            .collect();
        for id in expired {
            if let Some(s) = self.sessions.remove(&id) {
                let _ = s.tx.send(Push::Close(server_error(
                    ErrorCode::NodeExpired,
                    "node key expired: log in again with an auth key",
                )));
            }
            if let Some(n) = self.nodes.get_mut(&id) {
                log::info!("node {} ({id}): key expired, session closed", n.rec.name);
                n.live.session = None;
                n.live.offline_since = Some(now);
                n.live.online_until = Some(now);
            }
        }
        // Eligibility.
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in &ids {
            let eligible = self.nodes.get(id).is_some_and(|n| self.eligible(n, unix));
            if let Some(n) = self.nodes.get_mut(id) {
                match (eligible, n.live.eligible_since) {
                    (true, None) => n.live.eligible_since = Some(now),
                    (false, Some(_)) => n.live.eligible_since = None,
                    _ => {}
                }
            }
        }
        self.elect(now, unix);
        self.push_netmaps(now, unix);
    }

    fn elect(&mut self, now: Instant, unix: u64) {
        let in_startup_grace = now < self.started + self.cfg.startup_grace;
        let mut candidates: BTreeMap<IpNet, Vec<Candidate>> = BTreeMap::new();
        for n in self.nodes.values() {
            if n.rec.expired(unix) {
                continue;
            }
            for r in &n.rec.routes {
                if !(r.advertised && r.approved) || is_exit_route(&r.prefix) {
                    continue;
                }
                let mut eligible_since = n.live.eligible_since;
                if eligible_since.is_none()
                    && in_startup_grace
                    && !n.live.seen_since_start
                    && self.primaries.get(&r.prefix) == Some(&n.rec.id)
                {
                    // Persisted primary that has not reconnected yet: keep it for now.
                    eligible_since = Some(
                        self.started
                            .checked_sub(self.cfg.hold_down)
                            .unwrap_or(self.started),
                    );
                }
                candidates.entry(r.prefix).or_default().push(Candidate {
                    node: n.rec.id,
                    priority: n.rec.route_priority,
                    advertised_at: r.advertised_at,
                    eligible_since,
                });
            }
        }
        let mut next = BTreeMap::new();
        let mut recheck: Option<Instant> = None;
        for (prefix, cands) in &candidates {
            let d = election::elect(
                self.primaries.get(prefix).copied(),
                cands,
                now,
                self.cfg.hold_down,
            );
            if let Some(p) = d.primary {
                next.insert(*prefix, p);
            }
            recheck = match (recheck, d.recheck_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        self.recheck_at = recheck;
        if next == self.primaries {
            return;
        }
        let name = |id: Option<&u64>| {
            id.and_then(|i| self.nodes.get(i))
                .map(|n| n.rec.name.clone())
                .unwrap_or_else(|| "none".into())
        };
        let all: BTreeSet<IpNet> = next.keys().chain(self.primaries.keys()).copied().collect();
        for prefix in &all {
            let (old, new) = (self.primaries.get(prefix), next.get(prefix));
            if old != new {
                log::info!("primary for {prefix}: {} → {}", name(old), name(new));
            }
        }
        self.primaries = next;
        // Mirror the flags into the records and the store.
        let mut changes = Vec::new();
        for n in self.nodes.values_mut() {
            for r in &mut n.rec.routes {
                let primary = self.primaries.get(&r.prefix) == Some(&n.rec.id);
                if r.primary != primary {
                    r.primary = primary;
                    changes.push((n.rec.id, r.prefix, primary));
                }
            }
        }
        if !changes.is_empty() {
            let res = self.store.tx(|tx| {
                for (id, prefix, primary) in &changes {
                    Store::set_primary(tx, *id, prefix, *primary)?;
                }
                Ok(())
            });
            if let Err(e) = res {
                log::warn!("persisting primaries: {e:#}");
            }
        }
    }

    fn online(&self, n: &Node, now: Instant) -> bool {
        n.live.session.is_some() || n.live.online_until.is_some_and(|u| now < u)
    }

    fn view(&self, n: &Node, is_self: bool, now: Instant) -> NodeView {
        let rec = &n.rec;
        let addresses = vec![
            IpNet::from(IpAddr::V4(rec.ipv4)),
            IpNet::from(IpAddr::V6(rec.ipv6)),
        ];
        let mut routes = Vec::new();
        let mut allowed_ips = addresses.clone();
        let mut exit_node = false;
        for r in &rec.routes {
            if !r.advertised || !(r.approved || is_self) {
                continue;
            }
            let primary = !is_exit_route(&r.prefix)
                && r.approved
                && self.primaries.get(&r.prefix) == Some(&rec.id);
            if r.approved && (primary || is_exit_route(&r.prefix)) {
                allowed_ips.push(r.prefix);
            }
            if r.approved && is_exit_route(&r.prefix) {
                exit_node = true;
            }
            routes.push(RouteState {
                prefix: r.prefix,
                approved: r.approved,
                primary,
            });
        }
        NodeView {
            id: rec.id,
            name: rec.name.clone(),
            fqdn: format!("{}.{}", rec.name, self.cfg.domain),
            node_key: rec.node_key,
            endpoints: n.live.endpoints.clone(),
            relay_region: n.live.relay_region,
            peer_relay_port: n.live.peer_relay_port,
            addresses,
            allowed_ips,
            routes,
            exit_node,
            route_priority: rec.route_priority,
            online: self.online(n, now),
            last_seen: rec.last_seen,
            os: rec.os.clone(),
            user: rec.user.clone(),
            tags: rec.tags.clone(),
            key_expiry: rec.key_expiry,
            lan_ok: n.live.health.lan_ok,
            ephemeral: rec.ephemeral,
        }
    }

    /// What the ACL compiler needs to know of every node that is not expired.
    fn acl_nodes(&self, unix: u64) -> Vec<AclNode> {
        self.nodes
            .values()
            .filter(|n| !n.rec.expired(unix))
            .map(|n| {
                let approved = n.rec.routes.iter().filter(|r| r.advertised && r.approved);
                AclNode {
                    id: n.rec.id,
                    user: n.rec.user.clone(),
                    tags: n.rec.tags.clone(),
                    addresses: vec![
                        IpNet::from(IpAddr::V4(n.rec.ipv4)),
                        IpNet::from(IpAddr::V6(n.rec.ipv6)),
                    ],
                    // Standbys too: clients move to them before the server says so.
                    routes: approved
                        .clone()
                        .filter(|r| !is_exit_route(&r.prefix))
                        .map(|r| r.prefix)
                        .collect(),
                    exit: approved.clone().any(|r| is_exit_route(&r.prefix)),
                }
            })
            .collect()
    }

    /// Every node's packet filter (empty when the policy has no `acls`: all allowed).
    fn packet_filters(&self, unix: u64) -> PacketFilters {
        let acl = &self.cfg.policy.acl;
        if acl.rules.is_none() {
            return PacketFilters::new();
        }
        let nodes = self.acl_nodes(unix);
        nodes
            .iter()
            .map(|n| (n.id, acl.filter_for(n, &nodes)))
            .collect()
    }

    /// The netmap of node `id` (version 0): the peers it may reach or that may reach it.
    fn netmap(&self, id: u64, now: Instant, unix: u64, filters: &PacketFilters) -> Option<NetMap> {
        let me = self.nodes.get(&id)?;
        let none = None;
        let filter_of = |node: u64| filters.get(&node).unwrap_or(&none);
        // A node's traffic comes from its addresses and from the LANs it routes for, so a rule
        // whose source is a subnet route connects the router with the destination.
        let sources = |n: &Node| -> Vec<IpNet> {
            let mut all = vec![
                IpNet::from(IpAddr::V4(n.rec.ipv4)),
                IpNet::from(IpAddr::V6(n.rec.ipv6)),
            ];
            all.extend(
                n.rec
                    .routes
                    .iter()
                    .filter(|r| r.advertised && r.approved && !is_exit_route(&r.prefix))
                    .map(|r| r.prefix),
            );
            all
        };
        let mine = sources(me);
        let visible = |n: &Node| {
            filters.is_empty()
                || acl::admits(filter_of(id), &sources(n))
                || acl::admits(filter_of(n.rec.id), &mine)
        };
        let peers = self
            .nodes
            .values()
            .filter(|n| n.rec.id != id && !n.rec.expired(unix) && visible(n))
            .map(|n| self.view(n, false, now))
            .collect();
        Some(NetMap {
            version: 0,
            self_node: self.view(me, true, now),
            peers,
            dns: DnsConfig {
                domain: self.cfg.domain.clone(),
            },
            keepalive_interval_ms: self.cfg.keepalive.as_millis() as u64,
            packet_filter: filter_of(id).clone(),
            relay_map: relay_map_of(&self.cfg.relay_map, &self.cfg.policy)
                .ok()
                .filter(|m| !m.regions.is_empty()),
        })
    }

    fn push_netmaps(&mut self, now: Instant, unix: u64) {
        let ids: Vec<u64> = self.sessions.keys().copied().collect();
        let filters = self.packet_filters(unix);
        let mut bumped = false;
        for id in ids {
            let Some(nm) = self.netmap(id, now, unix, &filters) else {
                continue;
            };
            let Some(slot) = self.sessions.get_mut(&id) else {
                continue;
            };
            if slot.last.as_ref() == Some(&nm) {
                continue;
            }
            if !bumped {
                self.version += 1;
                bumped = true;
            }
            let mut versioned = nm.clone();
            versioned.version = self.version;
            slot.last = Some(nm);
            let _ = slot.tx.send(Push::NetMap(Arc::new(versioned)));
        }
    }

    /// Persists last-seen times of connected nodes (at shutdown).
    pub fn shutdown(&mut self) {
        let unix = unix_now();
        let ids: Vec<u64> = self.sessions.keys().copied().collect();
        for id in ids {
            if let Err(e) = self.store.set_last_seen(id, unix) {
                log::warn!("recording last seen of node {id}: {e:#}");
            }
            if let Some(s) = self.sessions.remove(&id) {
                let _ = s.tx.send(Push::Close(server_error(
                    ErrorCode::ShuttingDown,
                    "the control server is shutting down",
                )));
            }
        }
    }

    /// The number of nodes with a connected session.
    pub fn connected_count(&self) -> usize {
        self.sessions.len()
    }

    // ---- admin ----

    fn select(&self, sel: &str) -> Result<u64> {
        let sel = sel.trim();
        if let Ok(id) = sel.parse::<u64>() {
            if self.nodes.contains_key(&id) {
                return Ok(id);
            }
        }
        self.nodes
            .values()
            .find(|n| n.rec.name.eq_ignore_ascii_case(sel))
            .map(|n| n.rec.id)
            .ok_or_else(|| anyhow!("no node {sel:?} (give a node id or name; see `nodes list`)"))
    }

    fn route_info(&self, n: &Node, r: &RouteRecord) -> RouteInfo {
        RouteInfo {
            node_id: n.rec.id,
            node: n.rec.name.clone(),
            prefix: r.prefix,
            advertised: r.advertised,
            approved: r.approved,
            primary: r.primary,
            priority: n.rec.route_priority,
            connected: n.live.session.is_some(),
            lan_ok: n.live.health.lan_ok,
        }
    }

    fn node_info(&self, n: &Node, now: Instant, unix: u64) -> NodeInfo {
        NodeInfo {
            id: n.rec.id,
            name: n.rec.name.clone(),
            fqdn: format!("{}.{}", n.rec.name, self.cfg.domain),
            user: n.rec.user.clone(),
            tags: n.rec.tags.clone(),
            ipv4: n.rec.ipv4,
            ipv6: n.rec.ipv6,
            node_key: n.rec.node_key.to_base64(),
            machine_key: n.rec.machine_key.to_base64(),
            os: n.rec.os.clone(),
            online: self.online(n, now),
            connected: n.live.session.is_some(),
            last_seen: n.rec.last_seen,
            key_expiry: n.rec.key_expiry,
            expired: n.rec.expired(unix),
            ephemeral: n.rec.ephemeral,
            route_priority: n.rec.route_priority,
            lan_ok: n.live.health.lan_ok,
            endpoints: n.live.endpoints.clone(),
            routes: n.rec.routes.iter().map(|r| self.route_info(n, r)).collect(),
        }
    }

    fn auth_key_info(rec: &AuthKeyRecord, unix: u64) -> AuthKeyInfo {
        AuthKeyInfo {
            id: rec.key_id.clone(),
            user: rec.user.clone(),
            reusable: rec.reusable,
            ephemeral: rec.ephemeral,
            tags: rec.tags.clone(),
            created_at: rec.created_at,
            expires_at: rec.expires_at,
            used: rec.used_at.is_some(),
            used_by: rec.used_by,
            expired: rec.expires_at.is_some_and(|e| e <= unix),
            revoked: rec.revoked,
        }
    }

    /// Creates an auth key; returns the full key (shown once) and its description.
    pub fn create_auth_key(
        &mut self,
        user: &str,
        reusable: bool,
        ephemeral: bool,
        tags: &[String],
        expiry: Option<Duration>,
    ) -> Result<CreatedAuthKey> {
        for t in tags {
            validate_tag(t)?;
        }
        let user_rec = match self.store.user_by_name(user)? {
            Some(u) => u,
            None if user == self.cfg.default_user => self.store.create_user(user)?,
            None => {
                return Err(anyhow!(
                    "unknown user {user:?} (create it with `tailgate control users create {user}`)"
                ))
            }
        };
        let unix = unix_now();
        let expiry = expiry.unwrap_or(self.cfg.auth_key_expiry);
        let expires_at = (!expiry.is_zero()).then(|| unix + expiry.as_secs().max(1));
        let id = random_hex(6);
        let secret = random_hex(24);
        let rec = self.store.insert_auth_key(
            &id,
            &sha256(secret.as_bytes()),
            &user_rec,
            reusable,
            ephemeral,
            tags,
            expires_at,
        )?;
        log::info!(
            "created auth key {id} (user {user}, reusable {reusable}, ephemeral {ephemeral}, tags {tags:?})"
        );
        Ok(CreatedAuthKey {
            key: format!("{AUTH_KEY_PREFIX}{id}-{secret}"),
            info: Self::auth_key_info(&rec, unix),
        })
    }

    /// Expires a node's key now.
    pub fn expire_node(&mut self, sel: &str, now: Instant) -> Result<NodeInfo> {
        let id = self.select(sel)?;
        let unix = unix_now();
        let mut rec = self.nodes[&id].rec.clone();
        rec.key_expiry = Some(unix);
        self.store.tx(|tx| Store::update_node(tx, &rec))?;
        if let Some(n) = self.nodes.get_mut(&id) {
            n.rec = rec;
        }
        if let Some(s) = self.sessions.remove(&id) {
            let _ = s.tx.send(Push::Close(server_error(
                ErrorCode::NodeExpired,
                "an admin expired this node's key: log in again with an auth key",
            )));
            if let Some(n) = self.nodes.get_mut(&id) {
                n.live.session = None;
                n.live.offline_since = Some(now);
            }
        }
        log::info!("expired node {id}");
        self.recompute(now);
        Ok(self.node_info(&self.nodes[&id], now, unix))
    }

    /// Renames a node (its MagicDNS name). The name is made a DNS label and unique, as at
    /// registration; it stays until the node asks for a different hostname.
    pub fn rename_node(&mut self, sel: &str, name: &str, now: Instant) -> Result<NodeInfo> {
        let id = self.select(sel)?;
        let unix = unix_now();
        let mut rec = self.nodes[&id].rec.clone();
        rec.name = self.unique_name(&sanitize_hostname(name), Some(id));
        self.store.tx(|tx| Store::update_node(tx, &rec))?;
        log::info!("renamed node {id} to {}", rec.name);
        if let Some(n) = self.nodes.get_mut(&id) {
            n.rec = rec;
        }
        self.recompute(now);
        Ok(self.node_info(&self.nodes[&id], now, unix))
    }

    /// Replaces the policy after parsing it and running its tests; on any error the old one
    /// stays. Stored (and written to the `--policy` file) before it takes effect.
    pub fn set_policy(&mut self, text: &str, now: Instant) -> Result<PolicySummary> {
        let policy = Policy::parse(text, "policy")?;
        relay_map_of(&self.cfg.relay_map, &policy)?;
        if let Some(path) = &self.cfg.policy_file {
            crate::atomic_file::write(path, text.as_bytes(), 0o644)
                .map_err(|e| anyhow!("writing {}: {e:#}", path.display()))?;
        }
        self.store.set_state(POLICY_STATE_KEY, text)?;
        let summary = PolicySummary::of(&policy);
        self.cfg.policy = policy;
        log::info!("new policy: {summary:?}");
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            if let Err(e) = self.reapply_policy(id) {
                log::warn!("node {id}: applying autoApprovers: {e:#}");
            }
        }
        self.recompute(now);
        Ok(summary)
    }

    /// Deletes a node.
    pub fn delete_node(&mut self, sel: &str, now: Instant) -> Result<u64> {
        let id = self.select(sel)?;
        self.delete_node_inner(
            id,
            server_error(ErrorCode::NotRegistered, "an admin deleted this node"),
        )?;
        self.recompute(now);
        Ok(id)
    }

    /// Approves (or withdraws approval of) routes of a node.
    pub fn set_approval(
        &mut self,
        sel: &str,
        routes: &[IpNet],
        approve: bool,
        now: Instant,
    ) -> Result<Vec<RouteInfo>> {
        let id = self.select(sel)?;
        if routes.is_empty() {
            return Err(anyhow!("no routes given"));
        }
        let now_ms = unix_now_ms();
        let mut wanted: BTreeSet<IpNet> = BTreeSet::new();
        for r in routes {
            let r = r.trunc();
            if is_exit_route(&r) {
                // Exit service is one decision for both families.
                wanted.insert(EXIT_V4);
                wanted.insert(EXIT_V6);
            } else {
                wanted.insert(r);
            }
        }
        let mut rec = self.nodes[&id].rec.clone();
        for w in &wanted {
            match rec.routes.iter_mut().find(|r| &r.prefix == w) {
                Some(r) => r.approved = approve,
                None if approve => rec.routes.push(RouteRecord {
                    prefix: *w,
                    advertised: false,
                    approved: true,
                    primary: false,
                    advertised_at: now_ms,
                }),
                None => {}
            }
        }
        rec.routes.retain(|r| r.advertised || r.approved);
        rec.routes.sort_by_key(|r| r.prefix);
        self.store
            .tx(|tx| Store::replace_routes(tx, id, &rec.routes))?;
        log::info!(
            "{} routes {:?} of node {} ({id})",
            if approve { "approved" } else { "unapproved" },
            wanted,
            rec.name
        );
        if let Some(n) = self.nodes.get_mut(&id) {
            n.rec = rec;
        }
        self.recompute(now);
        let n = &self.nodes[&id];
        Ok(n.rec.routes.iter().map(|r| self.route_info(n, r)).collect())
    }

    /// Answers an admin request.
    pub fn handle_admin(&mut self, req: AdminRequest, now: Instant) -> AdminResponse {
        match self.admin_inner(req, now) {
            Ok(v) => AdminResponse::Ok(v),
            Err(e) => AdminResponse::Error(format!("{e:#}")),
        }
    }

    fn admin_inner(&mut self, req: AdminRequest, now: Instant) -> Result<serde_json::Value> {
        let unix = unix_now();
        let v = match req {
            AdminRequest::Info => serde_json::to_value(ServerInfo {
                version: env!("CARGO_PKG_VERSION").into(),
                protocol: super::proto::PROTOCOL_VERSION,
                public_key: self.server_key.public_key().to_base64(),
                login_url: self.login_url.clone(),
                listen: self.listen.clone(),
                domain: self.cfg.domain.clone(),
                nodes: self.nodes.len(),
                connected: self.sessions.len(),
            })?,
            AdminRequest::UsersList => serde_json::to_value(
                self.store
                    .list_users()?
                    .into_iter()
                    .map(|u| UserInfo {
                        id: u.id,
                        name: u.name,
                        created_at: u.created_at,
                    })
                    .collect::<Vec<_>>(),
            )?,
            AdminRequest::UsersCreate { name } => {
                let name = name.trim();
                if name.is_empty() || name.len() > 128 || name.starts_with("tag:") {
                    return Err(anyhow!("bad user name {name:?}"));
                }
                let u = self.store.create_user(name)?;
                serde_json::to_value(UserInfo {
                    id: u.id,
                    name: u.name,
                    created_at: u.created_at,
                })?
            }
            AdminRequest::AuthkeyCreate {
                user,
                reusable,
                ephemeral,
                tags,
                expiry_secs,
            } => serde_json::to_value(self.create_auth_key(
                &user,
                reusable,
                ephemeral,
                &tags,
                expiry_secs.map(Duration::from_secs),
            )?)?,
            AdminRequest::AuthkeyList => serde_json::to_value(
                self.store
                    .list_auth_keys()?
                    .iter()
                    .map(|k| Self::auth_key_info(k, unix))
                    .collect::<Vec<_>>(),
            )?,
            AdminRequest::AuthkeyRevoke { id } => {
                let id = id
                    .trim()
                    .trim_start_matches(AUTH_KEY_PREFIX)
                    .split('-')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                if !self.store.revoke_auth_key(&id)? {
                    return Err(anyhow!("no auth key {id:?}"));
                }
                serde_json::json!({ "revoked": id })
            }
            AdminRequest::NodesList => serde_json::to_value(
                self.nodes
                    .values()
                    .map(|n| self.node_info(n, now, unix))
                    .collect::<Vec<_>>(),
            )?,
            AdminRequest::NodesExpire { node } => {
                serde_json::to_value(self.expire_node(&node, now)?)?
            }
            AdminRequest::NodesDelete { node } => {
                serde_json::json!({ "deleted": self.delete_node(&node, now)? })
            }
            AdminRequest::PolicySet { text } => serde_json::to_value(self.set_policy(&text, now)?)?,
            AdminRequest::PolicyGet => serde_json::json!({ "text": self.cfg.policy.text }),
            AdminRequest::NodesRename { node, name } => {
                serde_json::to_value(self.rename_node(&node, &name, now)?)?
            }
            AdminRequest::RoutesList => {
                let this = &*self;
                serde_json::to_value(
                    this.nodes
                        .values()
                        .flat_map(|n| n.rec.routes.iter().map(move |r| this.route_info(n, r)))
                        .collect::<Vec<_>>(),
                )?
            }
            AdminRequest::RoutesApprove { node, routes } => {
                serde_json::to_value(self.set_approval(&node, &routes, true, now)?)?
            }
            AdminRequest::RoutesUnapprove { node, routes } => {
                serde_json::to_value(self.set_approval(&node, &routes, false, now)?)?
            }
        };
        Ok(v)
    }
}

#[cfg(test)]
mod tests;
