//! A node's connections to relay servers: one per region it uses (its home region, and the
//! home regions of peers it sends to), kept up with backoff. Packets for a peer "at" a relay
//! region go out through that region's connection; what arrives is handed to the data path.
//!
//! Inside the data path a relay region is an address like any other: [`relay_addr`] maps
//! region 900 to `127.3.3.40:900`, so a peer's WireGuard endpoint can be "the relay".

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use x25519_dalek::StaticSecret;

use crate::derp::client::{self, Received, Sender};
use crate::derp::frame::NodeKey;
use crate::derp::map::{RelayMap, RelayRegion};

/// The address standing for "through the relay"; the port is the region ID.
pub const RELAY_MAGIC_IP: Ipv4Addr = Ipv4Addr::new(127, 3, 3, 40);
/// Wait before the first reconnect; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between reconnects.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Inbound packets queued for the data path before the relay reader waits.
pub const INBOUND_QUEUE: usize = 4096;

/// The data-path address of relay region `region` (IDs above 65535 have none).
pub fn relay_addr(region: u32) -> Option<SocketAddr> {
    u16::try_from(region)
        .ok()
        .map(|p| SocketAddr::new(IpAddr::V4(RELAY_MAGIC_IP), p))
}

/// The relay region an address stands for, if it is a relay address.
pub fn region_of(addr: SocketAddr) -> Option<u32> {
    match addr.ip() {
        IpAddr::V4(ip) if ip == RELAY_MAGIC_IP => Some(u32::from(addr.port())),
        IpAddr::V6(ip) if ip.to_ipv4_mapped() == Some(RELAY_MAGIC_IP) => {
            Some(u32::from(addr.port()))
        }
        _ => None,
    }
}

/// A packet that came through a relay.
#[derive(Debug)]
pub struct Inbound {
    /// The region it came through.
    pub region: u32,
    /// The sending node's key.
    pub src: NodeKey,
    /// The datagram (WireGuard or discovery).
    pub data: Vec<u8>,
}

/// Counters of a node's relay use.
#[derive(Debug, Default)]
pub struct RelayCounters {
    /// Datagrams sent through a relay.
    pub sent: AtomicU64,
    /// Datagrams received through a relay.
    pub received: AtomicU64,
    /// Datagrams dropped because the region's connection was down or full.
    pub dropped: AtomicU64,
}

struct Link {
    sender: Arc<Mutex<Option<Sender>>>,
    connected: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The state of one region's connection, for status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LinkStatus {
    /// Region ID.
    pub region: u32,
    /// Region code.
    pub code: String,
    /// Whether the connection is up.
    pub connected: bool,
    /// Whether it is the node's home region.
    pub home: bool,
}

/// The node's relay connections.
pub struct RelayLinks {
    key: RwLock<StaticSecret>,
    map: RwLock<RelayMap>,
    links: Mutex<HashMap<u32, Link>>,
    inbound: mpsc::Sender<Inbound>,
    home: AtomicU32,
    /// Counters.
    pub counters: RelayCounters,
}

impl RelayLinks {
    /// Links that log in as `key` and deliver what arrives to `inbound`.
    pub fn new(key: StaticSecret, inbound: mpsc::Sender<Inbound>) -> Arc<RelayLinks> {
        Arc::new(RelayLinks {
            key: RwLock::new(key),
            map: RwLock::new(RelayMap::default()),
            links: Mutex::new(HashMap::new()),
            inbound,
            home: AtomicU32::new(0),
            counters: RelayCounters::default(),
        })
    }

    /// Uses a new node key from the next connection on (node-key rotation); current
    /// connections are replaced.
    pub fn set_key(self: &Arc<Self>, key: StaticSecret) {
        *self.key.write().expect("relay key lock") = key;
        self.links.lock().expect("links lock").clear();
        if let Some(home) = self.home() {
            self.ensure(home);
        }
    }

    /// Takes a new relay map: regions no longer in it are dropped, the home region is chosen
    /// (the lowest region ID not marked `Avoid`, else the lowest) and connected.
    pub fn set_map(self: &Arc<Self>, map: RelayMap) {
        let home = map
            .regions
            .values()
            .find(|r| !r.avoid)
            .or_else(|| map.regions.values().next())
            .map(|r| r.region_id)
            .unwrap_or(0);
        {
            let mut links = self.links.lock().expect("links lock");
            let old = self.map.read().expect("map lock").clone();
            links.retain(|id, _| map.regions.get(id) == old.regions.get(id));
        }
        *self.map.write().expect("map lock") = map;
        self.home.store(home, Relaxed);
        if home != 0 {
            self.ensure(home);
        }
    }

    /// The home region, if there is a relay map.
    pub fn home(&self) -> Option<u32> {
        match self.home.load(Relaxed) {
            0 => None,
            h => Some(h),
        }
    }

    /// The STUN server of the home region (its first node with STUN), resolved.
    pub async fn stun_target(&self) -> Option<SocketAddr> {
        let home = self.home()?;
        let node = {
            let map = self.map.read().expect("map lock");
            map.regions
                .get(&home)?
                .nodes
                .iter()
                .find(|n| n.stun_port().is_some())?
                .clone()
        };
        let port = node.stun_port()?;
        if let Some(ip) = node.fixed_addrs().into_iter().next() {
            return Some(SocketAddr::new(ip, port));
        }
        let target = format!("{}:{port}", node.host_name);
        let mut addrs = tokio::net::lookup_host(target.as_str()).await.ok()?;
        addrs.next()
    }

    /// Whether the region exists in the current map.
    pub fn knows(&self, region: u32) -> bool {
        self.map
            .read()
            .expect("map lock")
            .regions
            .contains_key(&region)
    }

    /// Sends `data` to the node `dst` through region `region`; false (counted) if that
    /// region's connection is not up yet (it is being set up) or is full.
    pub fn send(self: &Arc<Self>, region: u32, dst: NodeKey, data: &[u8]) -> bool {
        let sender = self.ensure(region);
        let sent = sender
            .and_then(|s| s.lock().expect("sender lock").clone())
            .is_some_and(|s| s.try_send(dst, data.to_vec()).is_ok());
        if sent {
            self.counters.sent.fetch_add(1, Relaxed);
        } else {
            self.counters.dropped.fetch_add(1, Relaxed);
        }
        sent
    }

    /// The connections and their state.
    pub fn status(&self) -> Vec<LinkStatus> {
        let map = self.map.read().expect("map lock");
        let links = self.links.lock().expect("links lock");
        let home = self.home.load(Relaxed);
        map.regions
            .values()
            .filter(|r| links.contains_key(&r.region_id) || r.region_id == home)
            .map(|r| LinkStatus {
                region: r.region_id,
                code: r.region_code.clone(),
                connected: links
                    .get(&r.region_id)
                    .is_some_and(|l| l.connected.load(Relaxed)),
                home: r.region_id == home,
            })
            .collect()
    }

    /// Whether region `region`'s connection is up.
    pub fn connected(&self, region: u32) -> bool {
        self.links
            .lock()
            .expect("links lock")
            .get(&region)
            .is_some_and(|l| l.connected.load(Relaxed))
    }

    /// The region's connection slot, starting its task if there is none.
    fn ensure(self: &Arc<Self>, region: u32) -> Option<Arc<Mutex<Option<Sender>>>> {
        let mut links = self.links.lock().expect("links lock");
        if let Some(l) = links.get(&region) {
            return Some(l.sender.clone());
        }
        let r = self
            .map
            .read()
            .expect("map lock")
            .regions
            .get(&region)?
            .clone();
        let sender = Arc::new(Mutex::new(None));
        let connected = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run_link(
            Arc::downgrade(self),
            r,
            sender.clone(),
            connected.clone(),
        ));
        links.insert(
            region,
            Link {
                sender: sender.clone(),
                connected,
                task,
            },
        );
        Some(sender)
    }
}

/// Resolves the first node of `region` that relays (fixed addresses first, then DNS).
async fn resolve(region: &RelayRegion) -> Option<client::ConnectOptions> {
    for node in region.nodes.iter().filter(|n| !n.stun_only) {
        if let Some(ip) = node.fixed_addrs().into_iter().next() {
            return Some(node.connect_options(ip));
        }
        let target = format!("{}:{}", node.host_name, node.derp_port());
        let first = match tokio::net::lookup_host(target.as_str()).await {
            Ok(mut addrs) => addrs.next(),
            Err(_) => None,
        };
        if let Some(a) = first {
            return Some(node.connect_options(a.ip()));
        }
    }
    None
}

async fn run_link(
    links: std::sync::Weak<RelayLinks>,
    region: RelayRegion,
    slot: Arc<Mutex<Option<Sender>>>,
    connected: Arc<AtomicBool>,
) {
    let id = region.region_id;
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(me) = links.upgrade() else { return };
        let key = me.key.read().expect("relay key lock").clone();
        let inbound = me.inbound.clone();
        let home = me.home() == Some(id);
        drop(me);
        let started = Instant::now();
        match resolve(&region).await {
            None => log::warn!("relay region {id}: no node address could be resolved"),
            Some(opts) => match client::connect(&opts, &key).await {
                Ok(c) => {
                    backoff = MIN_BACKOFF;
                    log::info!(
                        "relay region {id} ({}): connected to {} in {:?}",
                        region.region_code,
                        opts.host,
                        started.elapsed()
                    );
                    let _ = c.sender.note_preferred(home).await;
                    *slot.lock().expect("sender lock") = Some(c.sender.clone());
                    connected.store(true, Relaxed);
                    let mut receiver = c.receiver;
                    loop {
                        match receiver.recv().await {
                            Ok(Received::Packet { src, data }) => {
                                if let Some(me) = links.upgrade() {
                                    me.counters.received.fetch_add(1, Relaxed);
                                }
                                let msg = Inbound {
                                    region: id,
                                    src,
                                    data,
                                };
                                if inbound.send(msg).await.is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                log::warn!("relay region {id}: connection lost: {e}");
                                break;
                            }
                        }
                    }
                    connected.store(false, Relaxed);
                    *slot.lock().expect("sender lock") = None;
                }
                Err(e) => log::warn!("relay region {id}: {e:#}"),
            },
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_addresses_stand_for_regions() {
        let a = relay_addr(900).unwrap();
        assert_eq!(a.to_string(), "127.3.3.40:900");
        assert_eq!(region_of(a), Some(900));
        assert_eq!(region_of("127.3.3.41:900".parse().unwrap()), None);
        assert_eq!(region_of("[::ffff:127.3.3.40]:7".parse().unwrap()), Some(7));
        assert_eq!(relay_addr(70_000), None);
    }
}
