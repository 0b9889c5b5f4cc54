//! Control mode of the node daemon (`[control]` in the config): `tailgate up` registers with a
//! coordination server and starts the session; every netmap it streams becomes the device's
//! peers and routes, exactly as static peers would; `tailgate down` stops it.
//!
//! Netmaps are applied in place (peers that vanished are removed, the others updated), so
//! established tunnels survive. While the server is unreachable the client reconnects with
//! backoff by itself and the data plane keeps running on the last netmap.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::api::status::{ControlStatus, PeerStatus};
use crate::api::{UpRequest, UpResult};
use crate::config::{ControlConfig, PeerConfig};
use crate::control::client::{ClientEvent, ClientOptions, ControlClient, ControlHandle};
use crate::control::failover::{self, NodeId};
use crate::control::login_url::LoginServer;
use crate::control::node_state::NodeState;
use crate::control::proto::{Health, Hostinfo, NetMap, Registration, TAILNET_V4, TAILNET_V6};
use crate::device::{lock, Device};
use crate::forwarding::Routing;
use crate::liveness::{ProbeTiming, Prober};
use crate::netcfg::{InstalledRoutes, Netlink};
use crate::peer_relay::server::PeerRelayServer;
use crate::portmap::PortMapper;
use crate::prefs::RoutingPrefs;
use crate::traversal::manager::PathManager;
use crate::traversal::paths::{PeerInfo, Timing};
use crate::traversal::relay::{relay_addr, RelayLinks};
use crate::uapi::SetRequest;
use crate::wg::Key;
use x25519_dalek::StaticSecret;

/// A node key this close to its expiry is replaced (at `up` and by an hourly check).
const KEY_ROTATE_BEFORE: Duration = Duration::from_secs(14 * 24 * 3600);
/// How often a running session checks its key's expiry.
const KEY_CHECK: Duration = Duration::from_secs(3600);

/// How often the reported endpoints are recomputed.
const ENDPOINT_REFRESH: Duration = Duration::from_secs(2);

/// What control mode needs from the daemon.
#[derive(Clone)]
pub struct DaemonParts {
    /// The device.
    pub dev: Arc<Device>,
    /// Kernel routes through the TUN.
    pub routes: Arc<tokio::sync::Mutex<InstalledRoutes>>,
    /// Routing preferences and their system state.
    pub routing: Arc<tokio::sync::Mutex<Routing>>,
    /// Netlink handle.
    pub netlink: Netlink,
    /// TUN interface index.
    pub index: u32,
    /// Tunnel MTU.
    pub mtu: u16,
    /// Where the MagicDNS resolver gets its view (none when it does not run).
    pub dns: Option<crate::dns::service::DnsFeed>,
    /// Userspace networking: the stack that holds the addresses instead of a TUN.
    pub netstack: Option<crate::netstack::Netstack>,
}

/// The running session: its event pump, stopped through `stop`.
struct Session {
    stop: oneshot::Sender<()>,
    pump: JoinHandle<()>,
    /// What the node tells the server about itself; changes are sent at once.
    hostinfo: watch::Sender<Hostinfo>,
}

/// What `tailgate status` shows about the session.
#[derive(Default)]
struct View {
    status: ControlStatus,
    netmap: Option<Arc<NetMap>>,
    /// The node key's expiry (Unix seconds), from the registration.
    key_expiry: Option<u64>,
    /// The last `up` request (without its auth key), for restarting the session.
    last_up: Option<UpRequest>,
}

/// The daemon's control-mode state.
pub struct ControlMode {
    cfg: ControlConfig,
    parts: DaemonParts,
    session: tokio::sync::Mutex<Option<Session>>,
    view: Arc<Mutex<View>>,
    /// Primary routers that stopped answering probes through the tunnel.
    silent: Mutex<BTreeSet<NodeId>>,
    /// Woken by the session when the node key is about to expire.
    renew_key: Arc<tokio::sync::Notify>,
    /// The peer relay this node runs for the tailnet, if it runs one.
    peer_relay: Mutex<Option<Arc<PeerRelayServer>>>,
    /// Keeps a port mapping of the WireGuard port at the LAN's gateway (UPnP, NAT-PMP,
    /// PCP) while a session runs.
    port_mapper: Mutex<Option<Arc<PortMapper>>>,
}

impl ControlMode {
    /// Control mode with no session yet.
    pub fn new(cfg: ControlConfig, parts: DaemonParts) -> Arc<ControlMode> {
        let view = View {
            status: ControlStatus {
                state: "stopped".into(),
                login_server: cfg.login_server.as_ref().map(ToString::to_string),
                ..ControlStatus::default()
            },
            ..View::default()
        };
        let mode = Arc::new(ControlMode {
            cfg,
            parts,
            session: tokio::sync::Mutex::new(None),
            view: Arc::new(Mutex::new(view)),
            silent: Mutex::new(BTreeSet::new()),
            renew_key: Arc::new(tokio::sync::Notify::new()),
            peer_relay: Mutex::new(None),
            port_mapper: Mutex::new(None),
        });
        // Key renewal restarts the session, so it cannot run on the session's own task.
        let weak = Arc::downgrade(&mode);
        let renew = mode.renew_key.clone();
        tokio::spawn(async move {
            loop {
                renew.notified().await;
                let Some(mode) = weak.upgrade() else { break };
                let last_up = lock(&mode.view).last_up.clone();
                // `up` renews a key close to expiry by itself, and keeps the session going
                // if the server cannot be asked right now.
                if let Some(req) = last_up {
                    if let Err(e) = mode.up(req).await {
                        log::warn!("renewing the node key: {e}");
                    }
                }
            }
        });
        mode
    }

    /// At start-up: if the state dir holds a registration with the configured login server,
    /// starts the session without an auth key (as after a reboot).
    pub async fn resume(self: &Arc<Self>) {
        let Some(server) = &self.cfg.login_server else {
            return;
        };
        let registered = NodeState::load(&self.cfg.state_dir)
            .ok()
            .flatten()
            .is_some_and(|s| {
                s.registration.is_some()
                    && s.login_server.as_deref() == Some(&format!("tg://{}", server.address()))
            });
        if !registered {
            return;
        }
        let prefs = self.parts.routing.lock().await.status().prefs.clone();
        let req = UpRequest {
            advertise_routes: prefs.advertise_routes.clone(),
            advertise_exit_node: prefs.advertise_exit_node,
            accept_routes: prefs.accept_routes,
            ..UpRequest::default()
        };
        match self.up(req).await {
            Ok(r) => log::info!("resumed the control session as {}", r.name),
            Err(e) => log::warn!("resuming the control session: {e}"),
        }
    }

    /// `tailgate up`: registers (with an auth key) and (re)starts the session. Errors are the
    /// sentences the caller shows verbatim (e.g. "registration refused: auth key already used").
    pub async fn up(self: &Arc<Self>, req: UpRequest) -> Result<UpResult, String> {
        let mut session = self.session.lock().await;
        let login_server: LoginServer = match (&req.login_server, &self.cfg.login_server) {
            (Some(u), _) => u.parse().map_err(|e| format!("--login-server: {e}"))?,
            (None, Some(l)) => l.clone(),
            (None, None) => {
                return Err(
                    "no login server: pass --login-server or set control.login_server".into(),
                )
            }
        };
        let mut prefs = self.parts.routing.lock().await.status().prefs.clone();
        prefs.advertise_routes = req.advertise_routes.clone();
        prefs.advertise_exit_node = req.advertise_exit_node;
        prefs.accept_routes = req.accept_routes;
        prefs.normalize()?;
        let hostname = req
            .hostname
            .clone()
            .or_else(|| self.cfg.hostname.clone())
            .unwrap_or_else(system_hostname);
        let hostinfo = Hostinfo {
            hostname,
            os: "linux".into(),
            advertised_routes: advertised_to_server(&prefs),
            advertise_exit_node: prefs.advertise_exit_node,
            route_priority: req.route_priority,
            // Set once the relay runs with the node key (below).
            peer_relay_port: None,
        };
        if let Some(old) = session.take() {
            stop_session(old).await;
        }
        let (hostinfo_tx, hostinfo_rx) = watch::channel(hostinfo.clone());
        let mut opts =
            ClientOptions::new(login_server.clone(), self.cfg.state_dir.clone(), hostinfo);
        opts.auth_key = req.auth_key.clone();
        let mut client = ControlClient::new(opts).map_err(|e| e.to_string())?;
        if let Some(key) = &req.auth_key {
            client
                .register(Some(key))
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut reg = client.registration().cloned().ok_or_else(|| {
            format!("this node is not registered with {login_server}: pass --auth-key")
        })?;
        let key = client.node_private_key();
        if self.parts.dev.state().private_key != key {
            self.parts
                .dev
                .apply(&SetRequest {
                    private_key: Some(Some(key)),
                    ..SetRequest::default()
                })
                .map_err(|e| format!("switching to the node key: {e}"))?;
        }
        if req.rotate_key {
            reg = self.rotate_key(&mut client).await?;
        } else if key_expires_soon(reg.key_expiry) {
            // Automatic renewal: failing it (server unreachable) must not stop the session;
            // the hourly check tries again.
            match self.rotate_key(&mut client).await {
                Ok(r) => reg = r,
                Err(e) => log::warn!("{e}; keeping the current key for now"),
            }
        }
        // The peer relay speaks with the (possibly new) node key.
        let relay_port = match self.set_peer_relay(prefs.peer_relay_port).await {
            Ok(port) => port,
            Err(e) => {
                log::warn!("{e}");
                None
            }
        };
        hostinfo_tx.send_modify(|h| h.peer_relay_port = relay_port);
        let addresses: Vec<IpNet> = vec![
            IpNet::new(IpAddr::V4(reg.ipv4), 32).map_err(|e| e.to_string())?,
            IpNet::new(IpAddr::V6(reg.ipv6), 128).map_err(|e| e.to_string())?,
        ];
        match &self.parts.netstack {
            Some(stack) => stack.set_addresses(&addresses),
            None => self
                .parts
                .netlink
                .configure_interface(self.parts.index, self.parts.mtu, &addresses)
                .await
                .map_err(|e| format!("configuring the tailnet addresses: {e:#}"))?,
        }
        {
            let mut routing = self.parts.routing.lock().await;
            routing
                .apply(&self.parts.dev, &self.parts.routes, prefs)
                .await
                .map_err(|e| format!("routing settings: {e:#}"))?;
        }
        {
            let mut v = lock(&self.view);
            v.status = ControlStatus {
                state: "starting".into(),
                login_server: Some(login_server.to_string()),
                name: Some(reg.name.clone()),
                addresses: addresses.iter().map(|a| a.addr().to_string()).collect(),
                error: None,
                netmap_version: None,
                failovers: v.status.failovers,
            };
            v.key_expiry = reg.key_expiry;
            v.last_up = Some(UpRequest {
                auth_key: None,
                rotate_key: false,
                login_server: Some(login_server.to_string()),
                ..req.clone()
            });
        }
        let (handle, events) = client.start();
        lock(&self.port_mapper)
            .get_or_insert_with(|| PortMapper::start(self.parts.dev.state().listen_port, None));
        handle.set_endpoints(self.own_endpoints(&login_server));
        // Probed whenever configured: a node may become a router with `tailgate set`.
        let health = self.cfg.health_probe.and_then(|target| {
            start_prober(ProbeTiming::LAN_HEALTH, "LAN health probe").map(|p| {
                p.set_targets(vec![((), target)]);
                (p, target)
            })
        });
        // The probes are kernel ICMP sockets: without a TUN they cannot reach the tunnel.
        let tunnel = match self.parts.netstack {
            Some(_) => None,
            None => start_prober(ProbeTiming::TUNNEL, "tunnel probes of primary routers"),
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let pump = tokio::spawn(pump(
            self.clone(),
            handle,
            events,
            Probes { health, tunnel },
            stop_rx,
            hostinfo_rx,
            login_server.clone(),
        ));
        *session = Some(Session {
            stop: stop_tx,
            pump,
            hostinfo: hostinfo_tx,
        });
        log::info!(
            "control session with {login_server} started as {} ({})",
            reg.name,
            reg.ipv4
        );
        Ok(UpResult {
            login_server: login_server.to_string(),
            name: reg.name,
            addresses: addresses.iter().map(|a| a.addr().to_string()).collect(),
        })
    }

    /// Replaces the node key: the device switches first, keeping its sessions (peers that
    /// still know the old key go on using them), then the server is told; if it refuses, the
    /// device goes back to the old key.
    async fn rotate_key(&self, client: &mut ControlClient) -> Result<Registration, String> {
        let old = self.parts.dev.state().private_key;
        let new = Key::generate_private();
        self.parts.dev.rotate_private_key(new);
        match client.rotate_node_key(new).await {
            Ok(reg) => {
                log::info!(
                    "node key rotated: {} → {}",
                    old.public_key().short(),
                    new.public_key().short()
                );
                Ok(reg)
            }
            Err(e) => {
                self.parts.dev.rotate_private_key(old);
                Err(format!("rotating the node key: {e}"))
            }
        }
    }

    /// `tailgate down`: stops the session, removes every peer and the tailnet addresses (the
    /// interface stays).
    pub async fn down(&self) -> Result<(), String> {
        let mut session = self.session.lock().await;
        if let Some(s) = session.take() {
            stop_session(s).await;
        }
        let _ = self.set_peer_relay(None).await;
        let mapper = lock(&self.port_mapper).take();
        if let Some(m) = mapper {
            m.shutdown().await;
        }
        self.parts
            .dev
            .apply(&SetRequest {
                replace_peers: true,
                ..SetRequest::default()
            })
            .map_err(|e| e.to_string())?;
        self.parts
            .routes
            .lock()
            .await
            .sync(&self.parts.dev.allowed_networks())
            .await
            .map_err(|e| format!("{e:#}"))?;
        let addresses: Vec<IpNet> = lock(&self.view)
            .status
            .addresses
            .iter()
            .filter_map(|a| a.parse::<IpAddr>().ok())
            .map(IpNet::from)
            .collect();
        match &self.parts.netstack {
            Some(stack) => stack.set_addresses(&[]),
            None => self
                .parts
                .netlink
                .remove_addresses(self.parts.index, &addresses)
                .await
                .map_err(|e| format!("removing the tailnet addresses: {e:#}"))?,
        }
        let mut v = lock(&self.view);
        v.status.state = "stopped".into();
        v.status.error = None;
        v.status.addresses.clear();
        v.netmap = None;
        Ok(())
    }

    /// After `tailgate set`: tells the server the new advertised routes, exit-node offer and
    /// (if given) HA priority. Without a session they are sent with the next `tailgate up`.
    pub async fn preferences_changed(&self, prefs: &RoutingPrefs, route_priority: Option<u32>) {
        if let Some(s) = self.session.lock().await.as_ref() {
            let relay_port = lock(&self.peer_relay).as_ref().map(|r| r.port());
            s.hostinfo.send_modify(|h| {
                h.advertised_routes = advertised_to_server(prefs);
                h.advertise_exit_node = prefs.advertise_exit_node;
                h.peer_relay_port = relay_port;
                if let Some(p) = route_priority {
                    h.route_priority = p;
                }
            });
        }
    }

    /// Starts, moves or stops this node's peer relay to match `port`, speaking with the
    /// current node key; returns the port it listens on. Nodes of the netmap may use it.
    pub async fn set_peer_relay(&self, port: Option<u16>) -> Result<Option<u16>, String> {
        let key = StaticSecret::from(*self.parts.dev.state().private_key.as_bytes());
        let Some(port) = port else {
            if lock(&self.peer_relay).take().is_some() {
                log::info!("peer relay stopped");
            }
            return Ok(None);
        };
        if let Some(r) = lock(&self.peer_relay).as_ref().filter(|r| r.port() == port) {
            r.set_key(key);
            return Ok(Some(port));
        }
        let dev = Arc::downgrade(&self.parts.dev);
        let allowed: crate::peer_relay::server::Allowed = Box::new(move |k| {
            dev.upgrade()
                .is_some_and(|d| d.state().peers.contains_key(&Key::from_bytes(*k)))
        });
        let server =
            PeerRelayServer::start(port, crate::peer_relay::DEFAULT_SESSIONS, key, allowed)
                .await
                .map_err(|e| format!("peer relay on UDP port {port}: {e}"))?;
        // The old relay (another port) keeps running until the new one listens.
        *lock(&self.peer_relay) = Some(Arc::new(server));
        Ok(Some(port))
    }

    /// The peer relay's port, sessions and counters, when it runs.
    pub fn peer_relay_status(&self) -> Option<crate::peer_relay::server::PeerRelayStatus> {
        lock(&self.peer_relay).as_ref().map(|r| r.status())
    }

    /// Stops the session (daemon shutdown).
    pub async fn shutdown(&self) {
        if let Some(s) = self.session.lock().await.take() {
            stop_session(s).await;
        }
        // The gateway forgets the mapping now rather than when it expires.
        let mapper = lock(&self.port_mapper).take();
        if let Some(m) = mapper {
            m.shutdown().await;
        }
    }

    /// The endpoints this node offers before STUN: the port mapping at the LAN's gateway
    /// (reachable from anywhere) first, then the local addresses.
    fn own_endpoints(&self, login_server: &LoginServer) -> Vec<SocketAddr> {
        let port = self.parts.dev.state().listen_port;
        let mapped = lock(&self.port_mapper)
            .as_ref()
            .and_then(|m| m.current())
            .map(|m| m.external);
        let mut out: Vec<SocketAddr> = mapped.into_iter().collect();
        for e in local_endpoints(login_server, port, &self.parts.dev.name) {
            if !out.contains(&e) {
                out.push(e);
            }
        }
        out
    }

    /// The session's status.
    pub fn status(&self) -> ControlStatus {
        lock(&self.view).status.clone()
    }

    /// Adds names, addresses, online state and primary routes from the netmap to `peers`.
    pub fn annotate(&self, peers: &mut [PeerStatus]) {
        let Some(nm) = lock(&self.view).netmap.clone() else {
            return;
        };
        for p in peers.iter_mut() {
            if let Some(v) = nm
                .peers
                .iter()
                .find(|v| v.node_key.to_base64() == p.public_key)
            {
                p.name = Some(v.name.clone());
                p.addresses = Some(v.addresses.iter().map(|a| a.addr().to_string()).collect());
                p.online = Some(v.online);
                p.primary_routes = Some(v.primary_routes().map(|r| r.to_string()).collect());
                p.standby_routes = Some(
                    v.routes
                        .iter()
                        .filter(|r| r.approved && !r.primary && r.prefix.prefix_len() != 0)
                        .map(|r| r.prefix.to_string())
                        .collect(),
                );
                p.os = Some(v.os.clone());
            }
            if let (Some(paths), Ok(key)) =
                (self.parts.dev.paths.get(), Key::from_base64(&p.public_key))
            {
                if let Some(view) = paths.view(&key) {
                    p.path = Some(view.path.to_string());
                    p.direct_rtt_ms = view.latency.map(|d| d.as_secs_f64() * 1e3);
                }
            }
        }
    }

    /// The device's path manager, created with the first netmap that has a relay map; the
    /// relay map goes to its relay connections. `None` while no relay map was ever given.
    fn path_manager(&self, nm: &NetMap) -> Option<Arc<PathManager>> {
        let dev = &self.parts.dev;
        if nm.relay_map.is_none() && dev.paths.get().is_none() {
            return None;
        }
        let paths = dev
            .paths
            .get_or_init(|| {
                let key = StaticSecret::from(*dev.state().private_key.as_bytes());
                let relay = RelayLinks::new(key.clone(), dev.relay_inbound.clone());
                // Home region by measured latency, and failover.
                tokio::spawn(crate::netcheck::keep_home(Arc::downgrade(&relay)));
                let pm = PathManager::new(dev, relay, key, Timing::default());
                tokio::spawn(pm.clone().run());
                pm
            })
            .clone();
        paths
            .relay()
            .set_map(nm.relay_map.clone().unwrap_or_default());
        Some(paths)
    }

    /// Applies a netmap: peers (in place), their routes, kernel routes.
    async fn apply_netmap(&self, nm: &NetMap) {
        // Rules first, so that new peers never get in under the old ones.
        self.parts.dev.filter.set_rules(nm.packet_filter.as_deref());
        if let Some(dns) = &self.parts.dns {
            dns.netmap(nm);
        }
        let own = self.parts.dev.state().public_key;
        let paths = self.path_manager(nm);
        let routes = failover::effective_routes(nm, &lock(&self.silent));
        let peers: Vec<PeerConfig> = nm
            .peers
            .iter()
            .filter(|p| p.node_key != own)
            .map(|p| PeerConfig {
                public_key: p.node_key,
                preshared_key: None,
                // With a relay the path manager picks the endpoint (re-applied below).
                endpoint: match (&paths, p.relay_region.and_then(relay_addr)) {
                    (Some(_), Some(relay)) => Some(relay),
                    _ => p.endpoints.first().copied(),
                },
                allowed_ips: p.addresses.iter().map(IpNet::trunc).collect(),
                persistent_keepalive: None,
                name: Some(p.name.clone()),
                routes: routes.get(&p.id).cloned().unwrap_or_default(),
                exit_node: p.exit_node,
            })
            .collect();
        if let Err(e) = self.parts.dev.sync_peers(&peers) {
            log::warn!("applying netmap {}: {e}", nm.version);
        }
        if let Some(paths) = &paths {
            let info: Vec<PeerInfo> = nm
                .peers
                .iter()
                .filter(|p| p.node_key != own)
                .map(|p| PeerInfo {
                    key: p.node_key,
                    region: p.relay_region,
                    endpoints: p.endpoints.clone(),
                    peer_relay_port: p.peer_relay_port,
                })
                .collect();
            paths.sync(&info);
        }
        let prefs = self.parts.routing.lock().await.status().prefs.clone();
        if let Err(e) = self.parts.dev.set_routing(&prefs) {
            // E.g. the chosen exit node left the tailnet: keep the rest working.
            log::warn!("netmap {}: routing preferences: {e}", nm.version);
            let mut p = prefs;
            p.exit_node = None;
            let _ = self.parts.dev.set_routing(&p);
        }
        let nets = self.parts.dev.allowed_networks();
        if let Err(e) = self.parts.routes.lock().await.sync(&nets).await {
            log::warn!("netmap {}: installing routes: {e:#}", nm.version);
        }
        log::info!(
            "netmap {} applied: {} peer(s), primaries: {}",
            nm.version,
            peers.len(),
            nm.peers
                .iter()
                .flat_map(|p| p.primary_routes().map(move |r| format!("{r}→{}", p.name)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

async fn stop_session(mut s: Session) {
    let _ = s.stop.send(());
    if tokio::time::timeout(Duration::from_secs(5), &mut s.pump)
        .await
        .is_err()
    {
        log::warn!("control session did not stop within 5 s; aborting it");
        s.pump.abort();
    }
}

/// The session's probes (stopped when dropped).
struct Probes {
    /// A router's LAN health target.
    health: Option<(Prober<()>, IpAddr)>,
    /// Primary routers, through the tunnel (a client's quick failover).
    tunnel: Option<Prober<NodeId>>,
}

/// Starts a prober, or logs why it cannot run (the feature is then off).
fn start_prober<K>(timing: ProbeTiming, what: &'static str) -> Option<Prober<K>>
where
    K: Ord + Clone + Send + Sync + std::fmt::Debug + 'static,
{
    match Prober::start(timing, what) {
        Ok(p) => Some(p),
        Err(e) => {
            log::warn!("{what} disabled: opening a raw ICMP socket: {e}");
            None
        }
    }
}

/// Waits for the next change of an optional prober's silent set.
async fn next_change<K>(p: &mut Option<Prober<K>>) -> BTreeSet<K>
where
    K: Ord + Clone + Send + Sync + std::fmt::Debug + 'static,
{
    match p {
        Some(p) => p.changed().await,
        None => std::future::pending().await,
    }
}

/// Relays client events to the device and local state to the client until stopped.
async fn pump(
    mode: Arc<ControlMode>,
    handle: ControlHandle,
    mut events: tokio::sync::mpsc::UnboundedReceiver<ClientEvent>,
    probes: Probes,
    mut stop: oneshot::Receiver<()>,
    mut hostinfo: watch::Receiver<Hostinfo>,
    login_server: LoginServer,
) {
    let Probes { health, mut tunnel } = probes;
    let (mut health, health_target) = match health {
        Some((p, t)) => (Some(p), Some(t)),
        None => (None, None),
    };
    let mut refresh = tokio::time::interval(ENDPOINT_REFRESH);
    refresh.tick().await;
    let mut key_check = tokio::time::interval(KEY_CHECK);
    key_check.tick().await;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                if let (ClientEvent::NetMap(nm), Some(t)) = (&ev, &tunnel) {
                    let accept = mode.parts.routing.lock().await.status().prefs.accept_routes;
                    t.set_targets(if accept { failover::probe_targets(nm) } else { Vec::new() });
                }
                mode.on_event(ev).await;
                if let Some(paths) = mode.parts.dev.paths.get() {
                    paths.set_own_endpoints(mode.own_endpoints(&login_server));
                    handle.set_endpoints(paths.endpoints());
                    handle.set_relay_region(paths.relay().home());
                }
            }
            silent = next_change(&mut health) => {
                let target = health_target.map(|t| t.to_string()).unwrap_or_default();
                let h = if silent.is_empty() {
                    Health::default()
                } else {
                    Health { lan_ok: false, detail: Some(format!("ping {target}: no answer")) }
                };
                log::info!("LAN health probe of {target}: ok = {}", h.lan_ok);
                handle.set_health(h);
            }
            silent = next_change(&mut tunnel) => {
                let newly = {
                    let mut s = lock(&mode.silent);
                    let newly = silent.difference(&s).count() as u64;
                    *s = silent;
                    newly
                };
                let nm = {
                    let mut v = lock(&mode.view);
                    v.status.failovers += newly;
                    v.netmap.clone()
                };
                if let Some(nm) = nm {
                    mode.apply_netmap(&nm).await;
                }
            }
            Ok(()) = hostinfo.changed() => {
                let h = hostinfo.borrow_and_update().clone();
                log::info!(
                    "advertising {:?} (exit node: {}, priority {})",
                    h.advertised_routes, h.advertise_exit_node, h.route_priority
                );
                handle.set_hostinfo(h);
            }
            _ = key_check.tick() => {
                if key_expires_soon(lock(&mode.view).key_expiry) {
                    mode.renew_key.notify_one();
                }
            }
            _ = refresh.tick() => {
                let mut endpoints = mode.own_endpoints(&login_server);
                if let Some(paths) = mode.parts.dev.paths.get() {
                    paths.set_own_endpoints(endpoints);
                    endpoints = paths.endpoints();
                    handle.set_relay_region(paths.relay().home());
                }
                handle.set_endpoints(endpoints);
            }
        }
    }
    drop((health, tunnel));
    handle.shutdown().await;
}

impl ControlMode {
    async fn on_event(&self, ev: ClientEvent) {
        match ev {
            ClientEvent::Connected => {
                let mut v = lock(&self.view);
                v.status.state = "running".into();
                v.status.error = None;
            }
            ClientEvent::NetMap(nm) => {
                self.apply_netmap(&nm).await;
                let mut v = lock(&self.view);
                v.status.netmap_version = Some(nm.version);
                v.netmap = Some(nm);
            }
            ClientEvent::Registered(reg) => {
                let mut v = lock(&self.view);
                v.status.name = Some(reg.name);
            }
            ClientEvent::Disconnected { error, retry_in } => {
                log::info!("control session lost ({error}); retrying in {retry_in:?}");
                let mut v = lock(&self.view);
                v.status.state = "reconnecting".into();
                v.status.error = Some(error);
            }
            ClientEvent::NeedsLogin(why) => {
                log::warn!("control session stopped: {why}; run `tailgate up --auth-key …`");
                let mut v = lock(&self.view);
                v.status.state = "needs-login".into();
                v.status.error = Some(why);
            }
        }
    }
}

/// Whether a key expiring at `expiry` (Unix seconds) should be replaced now.
fn key_expires_soon(expiry: Option<u64>) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    expiry.is_some_and(|t| t <= now.saturating_add(KEY_ROTATE_BEFORE.as_secs()))
}

/// The routes the server should know this node offers: subnet routes and 4via6 prefixes
/// (exit routes are the `advertise_exit_node` flag).
fn advertised_to_server(prefs: &RoutingPrefs) -> Vec<IpNet> {
    prefs
        .advertised()
        .into_iter()
        .filter(|r| r.prefix_len() != 0)
        .collect()
}

/// The node's underlay endpoints: the address toward the login server first, then every other
/// global address of an interface that is not the tunnel, each with the listen port.
fn local_endpoints(server: &LoginServer, port: u16, tun: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    if let Some(ip) = address_toward(server) {
        out.push(SocketAddr::new(ip, port));
    }
    for ip in interface_addresses(tun) {
        let ep = SocketAddr::new(ip, port);
        if !out.contains(&ep) {
            out.push(ep);
        }
    }
    out.truncate(crate::control::proto::MAX_ENDPOINTS);
    out
}

fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || TAILNET_V4.contains(&v4))
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || TAILNET_V6.contains(&v6))
        }
    }
}

/// The local address the kernel uses toward the login server (no packet is sent).
fn address_toward(server: &LoginServer) -> Option<IpAddr> {
    use std::net::ToSocketAddrs;
    let dst = server.address().to_socket_addrs().ok()?.next()?;
    let bind: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let s = UdpSocket::bind(bind).ok()?;
    s.connect(dst).ok()?;
    let ip = s.local_addr().ok()?.ip();
    usable(ip).then_some(ip)
}

/// Global addresses of the interfaces other than `tun`, IPv4 first.
fn interface_addresses(tun: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        if name.to_bytes() == tun.as_bytes() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family says which struct it is.
        let ip = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    Some(IpAddr::from(
                        u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                    ))
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    Some(IpAddr::from(sin6.sin6_addr.s6_addr))
                }
                _ => None,
            }
        };
        if let Some(ip) = ip.filter(|ip| usable(*ip)) {
            out.push(ip);
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort_by_key(|ip| ip.is_ipv6());
    out
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}
