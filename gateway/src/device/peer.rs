//! One configured peer: its WireGuard state machine and its settings.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use ipnet::IpNet;

use crate::wg::{Key, Tunnel};

/// A peer of the device. The tunnel and the settings have separate locks so the data path
/// holds only the tunnel lock, briefly, and never across an await.
pub struct Peer {
    /// Upper 24 bits of every session index this peer's tunnel hands out.
    pub id: u32,
    /// The peer's static public key.
    pub public_key: Key,
    /// The WireGuard protocol state.
    pub tunnel: Mutex<Tunnel>,
    /// Endpoint, allowed IPs and keys as configured (or learned by roaming).
    pub settings: Mutex<PeerSettings>,
}

/// The mutable settings of a peer.
#[derive(Debug, Clone, Default)]
pub struct PeerSettings {
    /// Where to send; updated when an authenticated packet arrives from elsewhere.
    pub endpoint: Option<SocketAddr>,
    /// Networks routed to, and accepted from, this peer.
    pub allowed_ips: Vec<IpNet>,
    /// Pre-shared key, if any.
    pub preshared_key: Option<Key>,
    /// Persistent keepalive interval in seconds (0 = off).
    pub persistent_keepalive: u16,
    /// A name for the peer (`--exit-node=<name>`).
    pub name: Option<String>,
    /// Subnet routes the peer advertises (used with `accept_routes`).
    pub routes: Vec<IpNet>,
    /// Whether the peer offers exit-node service.
    pub offers_exit: bool,
}

impl PeerSettings {
    /// The peer's first IPv4 host address among its allowed IPs (its tailnet IPv4).
    pub fn tailnet_v4(&self) -> Option<std::net::Ipv4Addr> {
        self.allowed_ips.iter().find_map(|n| match n {
            IpNet::V4(v4) if v4.prefix_len() == 32 => Some(v4.addr()),
            _ => None,
        })
    }
}

impl Peer {
    /// A new peer whose session indices start with `id << 8`.
    pub fn new(
        id: u32,
        private_key: &Key,
        public_key: Key,
        settings: PeerSettings,
        now: Instant,
    ) -> Peer {
        let tunnel = new_tunnel(id, private_key, public_key, &settings, now);
        Peer {
            id,
            public_key,
            tunnel: Mutex::new(tunnel),
            settings: Mutex::new(settings),
        }
    }

    /// The current endpoint.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        lock(&self.settings).endpoint
    }

    /// Records the source of an authenticated packet as the peer's endpoint (roaming).
    pub fn roam_to(&self, src: SocketAddr) {
        let mut s = lock(&self.settings);
        if s.endpoint != Some(src) {
            log::info!("peer {}: endpoint now {src}", self.public_key.short());
            s.endpoint = Some(src);
        }
    }

    /// Switches to a new local private key keeping the established sessions (node-key
    /// rotation; see [`crate::wg::Tunnel::set_local_static`]).
    pub fn set_local_static(&self, private_key: &Key) {
        lock(&self.tunnel).set_local_static(*private_key);
    }

    /// Restarts the protocol state with a new local private key (all sessions are dropped).
    pub fn rekey_local(&self, private_key: &Key, now: Instant) {
        let settings = lock(&self.settings).clone();
        *lock(&self.tunnel) = new_tunnel(self.id, private_key, self.public_key, &settings, now);
    }
}

fn new_tunnel(
    id: u32,
    private_key: &Key,
    public_key: Key,
    s: &PeerSettings,
    now: Instant,
) -> Tunnel {
    let keepalive = (s.persistent_keepalive != 0).then_some(s.persistent_keepalive);
    Tunnel::new(
        *private_key,
        public_key,
        s.preshared_key,
        keepalive,
        id << 8,
        now,
    )
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it: peer state stays
/// usable, and each field is valid on its own.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
