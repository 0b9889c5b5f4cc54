//! The device: peers, cryptokey routing and the state the data path, the `wg` API and the
//! status API share.

pub mod counters;
pub mod datapath;
pub mod load;
pub mod peer;

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use ipnet::IpNet;

use crate::config::PeerConfig;
use crate::io::tun::Tun;
use crate::io::udp::WgSocket;
use crate::prefs::{exit_routes, RoutingPrefs};
use crate::route::PrefixTable;
use crate::uapi::{DeviceSnapshot, PeerSnapshot, PeerUpdate, SetRequest, UapiError};
use crate::wg::{Key, Responder};

pub use counters::{CounterSnapshot, Counters, DropReason};
pub use load::LoadMeter;
pub use peer::{lock, Peer, PeerSettings};

/// What a node takes from its peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientRouting {
    /// Install the subnet routes peers advertise.
    pub accept_routes: bool,
    /// The peer used as exit node.
    pub exit_peer: Option<Key>,
}

/// Largest peer id: session indices are `id << 8 | n`, so ids have 24 bits.
const MAX_PEER_ID: u32 = (1 << 24) - 1;

/// One WireGuard interface.
pub struct Device {
    /// TUN device name.
    pub name: String,
    /// The TUN device.
    pub tun: Tun,
    /// The WireGuard UDP socket.
    pub socket: WgSocket,
    /// Packet drop counters.
    pub counters: Counters,
    /// Handshake load meter (cookies under load).
    pub load: LoadMeter,
    /// What the tailnet policy lets in (control mode; allows everything until rules come).
    pub filter: crate::filter::PacketFilter,
    /// Path management (control mode with a relay map): relay connections and discovery.
    pub paths: std::sync::OnceLock<Arc<crate::traversal::manager::PathManager>>,
    /// Where relay connections deliver what they receive (read by the UDP reader).
    pub relay_inbound: tokio::sync::mpsc::Sender<crate::traversal::relay::Inbound>,
    relay_inbound_rx:
        std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<crate::traversal::relay::Inbound>>>,
    state: RwLock<DeviceState>,
}

/// Keys, peers and the routing table; replaced only under the write lock.
pub struct DeviceState {
    /// Our static private key.
    pub private_key: Key,
    /// Our static public key.
    pub public_key: Key,
    /// Bound UDP port.
    pub listen_port: u16,
    /// Firewall mark on outgoing packets.
    pub fwmark: u32,
    /// Handshake MAC/cookie checks and initiator identification.
    pub responder: Responder,
    /// Peers by public key.
    pub peers: HashMap<Key, Arc<Peer>>,
    /// Peers by id (upper 24 bits of session indices).
    pub by_id: HashMap<u32, Arc<Peer>>,
    /// What this node accepts from peers: subnet routes, an exit node.
    pub client: ClientRouting,
    /// 4via6 translation in userspace for the sites this node advertises.
    pub via: Option<Arc<crate::forwarding::ViaTranslator>>,
    /// 4via6 prefixes the XDP fast path translates (written to the TUN one by one).
    pub via_xdp: Option<Arc<crate::forwarding::ViaPassthrough>>,
    /// Longest-prefix match over all allowed IPs.
    pub routes: PrefixTable<Arc<Peer>>,
    next_id: u32,
}

impl DeviceState {
    fn new(private_key: Key, listen_port: u16) -> Self {
        let public_key = private_key.public_key();
        DeviceState {
            responder: Responder::new(private_key),
            private_key,
            public_key,
            listen_port,
            fwmark: 0,
            peers: HashMap::new(),
            by_id: HashMap::new(),
            routes: PrefixTable::new(),
            client: ClientRouting::default(),
            via: None,
            via_xdp: None,
            next_id: 1,
        }
    }

    fn allocate_id(&mut self) -> Result<u32, UapiError> {
        for _ in 0..=MAX_PEER_ID {
            let id = self.next_id;
            self.next_id = if id >= MAX_PEER_ID { 1 } else { id + 1 };
            if !self.by_id.contains_key(&id) {
                return Ok(id);
            }
        }
        Err(UapiError::invalid("too many peers"))
    }

    fn add_peer(
        &mut self,
        public_key: Key,
        settings: PeerSettings,
        now: Instant,
    ) -> Result<Arc<Peer>, UapiError> {
        if public_key == self.public_key {
            return Err(UapiError::invalid(
                "peer public key is the interface's own key",
            ));
        }
        let id = self.allocate_id()?;
        let peer = Arc::new(Peer::new(id, &self.private_key, public_key, settings, now));
        self.peers.insert(public_key, peer.clone());
        self.by_id.insert(id, peer.clone());
        Ok(peer)
    }

    fn remove_peer(&mut self, public_key: &Key) {
        if let Some(p) = self.peers.remove(public_key) {
            self.by_id.remove(&p.id);
        }
    }

    /// The networks routed to (and accepted from) `peer`: its allowed IPs, plus its subnet
    /// routes with `accept_routes`, plus the default routes if it is the chosen exit node.
    pub fn effective_networks(&self, peer: &Peer) -> Vec<IpNet> {
        let s = lock(&peer.settings);
        let mut nets = s.allowed_ips.clone();
        if self.client.accept_routes {
            nets.extend(
                s.routes
                    .iter()
                    .filter(|r| !nets.contains(r))
                    .copied()
                    .collect::<Vec<_>>(),
            );
        }
        if self.client.exit_peer == Some(peer.public_key) {
            nets.extend(exit_routes());
        }
        nets
    }

    /// Rebuilds the routing table from every peer's effective networks.
    fn rebuild_routes(&mut self) {
        let mut routes = PrefixTable::new();
        for p in self.peers.values() {
            for net in self.effective_networks(p) {
                routes.insert(net, p.clone());
            }
        }
        self.routes = routes;
    }

    /// Finds the peer `spec` names: its name, one of its tailnet addresses, or its public key.
    pub fn resolve_peer(&self, spec: &str) -> Result<&Arc<Peer>, String> {
        let ip: Option<std::net::IpAddr> = spec.parse().ok();
        let key = Key::from_base64(spec).ok();
        self.peers
            .values()
            .find(|p| {
                let s = lock(&p.settings);
                s.name.as_deref() == Some(spec)
                    || key.is_some_and(|k| k == p.public_key)
                    || ip.is_some_and(|ip| {
                        s.allowed_ips
                            .iter()
                            .any(|n| n.contains(&ip) && n.addr() == ip)
                    })
            })
            .ok_or_else(|| format!("no peer named or addressed {spec:?}"))
    }

    /// Finds the peer `spec` names (see [`DeviceState::resolve_peer`]) and checks it offers
    /// exit-node service.
    pub fn resolve_exit_node(&self, spec: &str) -> Result<Key, String> {
        let peer = self.resolve_peer(spec)?;
        if !lock(&peer.settings).offers_exit {
            return Err(format!("peer {spec:?} does not offer exit-node service"));
        }
        Ok(peer.public_key)
    }

    /// Gives `nets` to `owner` alone: as in WireGuard, an allowed IP moves to the peer that
    /// claimed it last.
    fn release_from_others(&self, owner: &Peer, nets: &[IpNet]) {
        for p in self.peers.values().filter(|p| p.id != owner.id) {
            lock(&p.settings).allowed_ips.retain(|n| !nets.contains(n));
        }
    }
}

impl Device {
    /// A device with our key and no peers yet.
    pub fn new(
        name: String,
        tun: Tun,
        socket: WgSocket,
        private_key: Key,
        listen_port: u16,
    ) -> Device {
        let now = Instant::now();
        let (relay_inbound, rx) =
            tokio::sync::mpsc::channel(crate::traversal::relay::INBOUND_QUEUE);
        Device {
            name,
            tun,
            socket,
            counters: Counters::default(),
            load: LoadMeter::new(now),
            filter: crate::filter::PacketFilter::default(),
            paths: std::sync::OnceLock::new(),
            relay_inbound,
            relay_inbound_rx: std::sync::Mutex::new(Some(rx)),
            state: RwLock::new(DeviceState::new(private_key, listen_port)),
        }
    }

    /// The receiving end of [`Device::relay_inbound`] (once; the UDP reader takes it).
    pub fn take_relay_inbound(
        &self,
    ) -> Option<tokio::sync::mpsc::Receiver<crate::traversal::relay::Inbound>> {
        lock(&self.relay_inbound_rx).take()
    }

    /// Whether the path manager chooses `peer`'s endpoint (WireGuard roaming must not).
    pub fn path_managed(&self, peer: &Key) -> bool {
        self.paths.get().is_some_and(|p| p.manages(peer))
    }

    /// Shared access to keys, peers and routes.
    pub fn state(&self) -> RwLockReadGuard<'_, DeviceState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn state_mut(&self) -> RwLockWriteGuard<'_, DeviceState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the peers of a configuration file.
    pub fn add_configured_peers(&self, peers: &[PeerConfig]) -> Result<(), UapiError> {
        self.apply_peer_requests(peers)?;
        let st = self.state();
        for p in peers {
            if let Some(peer) = st.peers.get(&p.public_key) {
                let mut s = lock(&peer.settings);
                s.name = p.name.clone();
                s.routes = p.routes.clone();
                s.offers_exit = p.exit_node;
            }
        }
        drop(st);
        self.state_mut().rebuild_routes();
        Ok(())
    }

    /// Makes the peer set exactly `peers` (a netmap's peers): peers that vanished are removed,
    /// the others are added or updated in place, so established sessions survive.
    pub fn sync_peers(&self, peers: &[PeerConfig]) -> Result<(), UapiError> {
        let gone: Vec<PeerUpdate> = {
            let st = self.state();
            st.peers
                .keys()
                .filter(|k| !peers.iter().any(|p| p.public_key == **k))
                .map(|k| PeerUpdate {
                    public_key: *k,
                    remove: true,
                    update_only: false,
                    preshared_key: None,
                    endpoint: None,
                    persistent_keepalive: None,
                    replace_allowed_ips: false,
                    allowed_ips: Vec::new(),
                })
                .collect()
        };
        if !gone.is_empty() {
            self.apply(&SetRequest {
                peers: gone,
                ..SetRequest::default()
            })?;
        }
        self.add_configured_peers(peers)
    }

    fn apply_peer_requests(&self, peers: &[PeerConfig]) -> Result<(), UapiError> {
        let req = SetRequest {
            peers: peers
                .iter()
                .map(|p| PeerUpdate {
                    public_key: p.public_key,
                    remove: false,
                    update_only: false,
                    preshared_key: p.preshared_key.map(Some),
                    endpoint: p.endpoint,
                    persistent_keepalive: p.persistent_keepalive,
                    replace_allowed_ips: true,
                    allowed_ips: p.allowed_ips.iter().map(IpNet::trunc).collect(),
                })
                .collect(),
            ..SetRequest::default()
        };
        self.apply(&req)
    }

    /// Applies a `wg set`-style request. Validation happens before any change, so a bad
    /// request leaves the device as it was.
    pub fn apply(&self, req: &SetRequest) -> Result<(), UapiError> {
        let now = Instant::now();
        let mut st = self.state_mut();
        if let Some(port) = req.listen_port {
            if port != st.listen_port {
                return Err(UapiError::invalid(format!(
                    "changing listen_port at runtime ({} -> {port}) is not supported; \
                     change it in the config file and restart the daemon",
                    st.listen_port
                )));
            }
        }
        if let Some(key) = &req.private_key {
            let key = (*key)
                .ok_or_else(|| UapiError::invalid("removing the private key is not supported"))?;
            if key != st.private_key {
                st.public_key = key.public_key();
                st.responder = Responder::new(key);
                st.private_key = key;
                let own = st.public_key;
                st.remove_peer(&own);
                for p in st.peers.values() {
                    p.rekey_local(&st.private_key, now);
                }
            }
        }
        if let Some(mark) = req.fwmark {
            self.socket
                .set_fwmark(mark)
                .map_err(|e| UapiError::invalid(format!("fwmark: {e}")))?;
            st.fwmark = mark;
        }
        if req.replace_peers {
            st.peers.clear();
            st.by_id.clear();
        }
        for u in &req.peers {
            if u.remove {
                st.remove_peer(&u.public_key);
                continue;
            }
            let peer = match st.peers.get(&u.public_key) {
                Some(p) => p.clone(),
                None if u.update_only => continue,
                None => st.add_peer(u.public_key, PeerSettings::default(), now)?,
            };
            st.release_from_others(&peer, &u.allowed_ips);
            apply_peer_update(&peer, u, now);
        }
        st.rebuild_routes();
        Ok(())
    }

    /// Every network routed to a peer except the default routes (what the TUN routes in the
    /// main table must cover; an exit node's default routes live in a table of their own).
    pub fn allowed_networks(&self) -> Vec<IpNet> {
        let st = self.state();
        let mut nets: Vec<IpNet> = st
            .peers
            .values()
            .flat_map(|p| st.effective_networks(p))
            .filter(|n| n.prefix_len() != 0)
            .collect();
        nets.sort();
        nets.dedup();
        nets
    }

    /// Applies the client half of `prefs` (accepted routes, exit node); the daemon does the
    /// rest (routes, NAT, policy routing, 4via6 with [`Device::set_via`]).
    pub fn set_routing(&self, prefs: &RoutingPrefs) -> Result<(), String> {
        let mut st = self.state_mut();
        let exit_peer = match &prefs.exit_node {
            Some(spec) => Some(st.resolve_exit_node(spec)?),
            None => None,
        };
        st.client = ClientRouting {
            accept_routes: prefs.accept_routes,
            exit_peer,
        };
        st.rebuild_routes();
        Ok(())
    }

    /// Sets up 4via6 for the advertised `sites`: the prefixes in `xdp` are translated by the
    /// XDP fast path (passed through untouched and never coalesced), the rest in userspace.
    pub fn set_via(&self, sites: &[crate::prefs::ViaSite], xdp: &[ipnet::Ipv6Net]) {
        use crate::forwarding::{ViaPassthrough, ViaTranslator};
        let mut st = self.state_mut();
        st.via = ViaTranslator::new_except(sites, xdp).map(Arc::new);
        st.via_xdp = ViaPassthrough::new(xdp).map(Arc::new);
    }

    /// Node-key rotation: switches to `key` keeping every established session (unlike
    /// `wg set private-key`, which drops them), so traffic flows on while the peers learn the
    /// new public key.
    pub fn rotate_private_key(&self, key: Key) {
        if let Some(p) = self.paths.get() {
            p.set_key(x25519_dalek::StaticSecret::from(*key.as_bytes()));
        }
        let mut st = self.state_mut();
        if key == st.private_key {
            return;
        }
        st.public_key = key.public_key();
        st.responder = Responder::new(key);
        st.private_key = key;
        for p in st.peers.values() {
            p.set_local_static(&key);
        }
    }

    /// What `wg show` needs.
    pub fn snapshot(&self) -> DeviceSnapshot {
        let st = self.state();
        let mut peers: Vec<PeerSnapshot> = st
            .peers
            .values()
            .map(|p| {
                let s = lock(&p.settings).clone();
                let stats = lock(&p.tunnel).stats();
                PeerSnapshot {
                    public_key: p.public_key,
                    preshared_key: s.preshared_key,
                    endpoint: s.endpoint,
                    last_handshake: stats.last_handshake,
                    tx_bytes: stats.tx_bytes,
                    rx_bytes: stats.rx_bytes,
                    tx_packets: stats.tx_packets,
                    rx_packets: stats.rx_packets,
                    handshakes: stats.handshakes,
                    persistent_keepalive: s.persistent_keepalive,
                    allowed_ips: st.effective_networks(p),
                }
            })
            .collect();
        peers.sort_by_key(|p| p.public_key.to_base64());
        DeviceSnapshot {
            private_key: Some(st.private_key),
            listen_port: st.listen_port,
            fwmark: st.fwmark,
            peers,
        }
    }
}

fn apply_peer_update(peer: &Peer, u: &PeerUpdate, now: Instant) {
    let mut s = lock(&peer.settings);
    if let Some(ep) = u.endpoint {
        s.endpoint = Some(ep);
    }
    if u.replace_allowed_ips {
        s.allowed_ips.clear();
    }
    for net in &u.allowed_ips {
        if !s.allowed_ips.contains(net) {
            s.allowed_ips.push(*net);
        }
    }
    let mut t = lock(&peer.tunnel);
    if let Some(psk) = &u.preshared_key {
        s.preshared_key = *psk;
        t.set_preshared_key(*psk);
    }
    if let Some(ka) = u.persistent_keepalive {
        s.persistent_keepalive = ka;
        t.set_persistent_keepalive((ka != 0).then_some(ka), now);
    }
}
