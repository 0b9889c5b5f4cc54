//! A node's connections to relay servers: one per region it uses (its home region, and the
//! home regions of peers it sends to), kept up with backoff. Packets for a peer "at" a relay
//! region go out through that region's connection; what arrives is handed to the data path.
//!
//! Inside the data path a relay region is an address like any other: [`relay_addr`] maps
//! region 900 to `127.3.3.40:900`, so a peer's WireGuard endpoint can be "the relay".

use std::collections::{BTreeMap, HashMap};
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

/// How long the home region's connection may be down before the home moves to another
/// region that answers.
pub const FAILOVER_AFTER: Duration = Duration::from_secs(3);
/// Another region replaces a reachable home only when its latency is below this fraction of
/// the home's (hysteresis: similar regions do not make the home flap).
pub const SWITCH_NUM: u32 = 2;
/// Denominator of the switch fraction ([`SWITCH_NUM`]/[`SWITCH_DEN`] = 2/3).
pub const SWITCH_DEN: u32 = 3;

/// What [`choose_home`] decides from.
#[derive(Clone, Copy)]
pub struct HomeInputs<'a> {
    /// The relay map.
    pub map: &'a RelayMap,
    /// The home region now (0: none yet).
    pub current: u32,
    /// The latest measured latency per region (regions that did not answer are absent;
    /// empty until the first measurement).
    pub latencies: &'a BTreeMap<u32, Duration>,
    /// How long the home region's connection has been down (`None`: up, or never tried).
    pub home_down_for: Option<Duration>,
    /// Whether a region's relay connection is up now.
    pub connected: &'a dyn Fn(u32) -> bool,
}

/// The home region by the ID rule used until latencies are measured: the lowest region ID not
/// marked `Avoid`, else the lowest; 0 for an empty map.
pub fn default_home(map: &RelayMap) -> u32 {
    map.regions
        .values()
        .find(|r| !r.avoid)
        .or_else(|| map.regions.values().next())
        .map_or(0, |r| r.region_id)
}

/// The fastest measured region among those `usable` says yes to, preferring regions not
/// marked `Avoid`.
fn fastest(i: &HomeInputs<'_>, usable: &dyn Fn(u32) -> bool) -> Option<u32> {
    let best = |avoid: bool| {
        i.latencies
            .iter()
            .filter(|(id, _)| usable(**id))
            .filter(|(id, _)| i.map.regions.get(id).is_some_and(|r| r.avoid == avoid))
            .min_by_key(|(id, d)| (**d, **id))
            .map(|(id, _)| *id)
    };
    best(false).or_else(|| best(true))
}

/// The home region (0: none, for an empty map):
///
/// - failover: when the home's connection has been down for more than [`FAILOVER_AFTER`],
///   the fastest other region that is reachable (answered the latest measurement, or whose
///   connection is up); the home stays if there is none;
/// - until latencies are measured, or when none answered: the current home while it is in the
///   map, else [`default_home`];
/// - otherwise the lowest latency, regions marked `Avoid` only when nothing else answered,
///   with hysteresis: a measured home is replaced only by a region under 2/3 of its latency
///   (a home that did not answer, or an `Avoid` one while another answered, is replaced).
pub fn choose_home(i: &HomeInputs<'_>) -> u32 {
    let in_map = |id: u32| i.map.regions.contains_key(&id);
    let current = if in_map(i.current) { i.current } else { 0 };
    if current != 0 && i.home_down_for.is_some_and(|d| d > FAILOVER_AFTER) {
        let reachable = |id: u32| id != current && in_map(id);
        if let Some(r) = fastest(i, &reachable) {
            return r;
        }
        let connected = i
            .map
            .regions
            .values()
            .filter(|r| r.region_id != current && (i.connected)(r.region_id))
            .min_by_key(|r| (r.avoid, r.region_id));
        return connected.map_or(current, |r| r.region_id);
    }
    let Some(best) = fastest(i, &in_map) else {
        return if current != 0 {
            current
        } else {
            default_home(i.map)
        };
    };
    if current == 0 || current == best {
        return best;
    }
    let Some(&cur) = i.latencies.get(&current) else {
        return best;
    };
    let cur_avoid = i.map.regions.get(&current).is_some_and(|r| r.avoid);
    let best_avoid = i.map.regions.get(&best).is_some_and(|r| r.avoid);
    if cur_avoid && !best_avoid {
        return best;
    }
    if i.latencies[&best] * SWITCH_DEN < cur * SWITCH_NUM {
        best
    } else {
        current
    }
}

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
    /// Whether the connection was ever up.
    was_up: Arc<AtomicBool>,
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
    /// This value itself, to start connections from `&self`.
    me: std::sync::Weak<RelayLinks>,
    key: RwLock<StaticSecret>,
    map: RwLock<RelayMap>,
    links: Mutex<HashMap<u32, Link>>,
    inbound: mpsc::Sender<Inbound>,
    home: AtomicU32,
    /// The latest measured latency per region (see [`RelayLinks::set_latencies`]).
    latencies: Mutex<BTreeMap<u32, Duration>>,
    /// Since when the home region's connection has been down.
    home_down_since: Mutex<Option<Instant>>,
    /// Counters.
    pub counters: RelayCounters,
}

impl RelayLinks {
    /// Links that log in as `key` and deliver what arrives to `inbound`.
    pub fn new(key: StaticSecret, inbound: mpsc::Sender<Inbound>) -> Arc<RelayLinks> {
        Arc::new_cyclic(|me| RelayLinks {
            me: me.clone(),
            key: RwLock::new(key),
            map: RwLock::new(RelayMap::default()),
            links: Mutex::new(HashMap::new()),
            inbound,
            home: AtomicU32::new(0),
            latencies: Mutex::new(BTreeMap::new()),
            home_down_since: Mutex::new(None),
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
    /// (see [`choose_home`]; the current home stays while it is in the map) and connected.
    pub fn set_map(self: &Arc<Self>, map: RelayMap) {
        {
            let mut links = self.links.lock().expect("links lock");
            let old = self.map.read().expect("map lock").clone();
            links.retain(|id, _| map.regions.get(id) == old.regions.get(id));
        }
        *self.map.write().expect("map lock") = map;
        self.reselect_home(Instant::now());
    }

    /// The current relay map.
    pub fn map(&self) -> RelayMap {
        self.map.read().expect("map lock").clone()
    }

    /// Takes newly measured latencies (regions that did not answer are absent) and chooses
    /// the home region again (see [`choose_home`]).
    pub fn set_latencies(self: &Arc<Self>, latencies: BTreeMap<u32, Duration>) {
        *self.latencies.lock().expect("latencies lock") = latencies;
        self.reselect_home(Instant::now());
    }

    /// The latest measured latencies.
    pub fn latencies(&self) -> BTreeMap<u32, Duration> {
        self.latencies.lock().expect("latencies lock").clone()
    }

    /// Notes whether the home connection is up at `now` and fails over when it has been down
    /// for longer than [`FAILOVER_AFTER`]. Returns true when the home connection has just
    /// been seen going down (latencies should then be measured again).
    pub fn check_home(self: &Arc<Self>, now: Instant) -> bool {
        let Some(home) = self.home() else {
            return false;
        };
        let up = self.link_up(home);
        let went_down = {
            let mut since = self.home_down_since.lock().expect("down lock");
            match (up, *since) {
                (true, _) => {
                    *since = None;
                    false
                }
                (false, None) => {
                    *since = Some(now);
                    // A link that never connected is not a lost connection (a probe will
                    // tell whether the region answers).
                    self.links
                        .lock()
                        .expect("links lock")
                        .get(&home)
                        .is_some_and(|l| l.was_up.load(Relaxed))
                }
                (false, Some(_)) => false,
            }
        };
        self.reselect_home(now);
        went_down
    }

    /// Chooses the home region from the map, latencies and home connection state, and
    /// connects to it; a change is logged and the relay servers told which one is preferred.
    fn reselect_home(self: &Arc<Self>, now: Instant) {
        let map = self.map.read().expect("map lock").clone();
        let latencies = self.latencies();
        let current = self.home.load(Relaxed);
        let down_for = (*self.home_down_since.lock().expect("down lock"))
            .map(|t| now.saturating_duration_since(t));
        let connected = |r: u32| self.link_up(r);
        let home = choose_home(&HomeInputs {
            map: &map,
            current,
            latencies: &latencies,
            home_down_for: down_for,
            connected: &connected,
        });
        if home == current {
            if home != 0 {
                self.ensure(home);
            }
            return;
        }
        self.home.store(home, Relaxed);
        *self.home_down_since.lock().expect("down lock") = None;
        if current != 0 {
            let ms = |r: u32| {
                latencies.get(&r).map_or("no answer".to_string(), |d| {
                    format!("{:.1}ms", d.as_secs_f64() * 1e3)
                })
            };
            log::info!(
                "home relay region: {current} ({}) → {home} ({}){}",
                ms(current),
                ms(home),
                if down_for.is_some_and(|d| d > FAILOVER_AFTER) {
                    " (failover: the home connection is down)"
                } else {
                    ""
                }
            );
        }
        if home == 0 {
            return;
        }
        self.ensure(home);
        for (region, preferred) in [(current, false), (home, true)] {
            let sender = self
                .links
                .lock()
                .expect("links lock")
                .get(&region)
                .and_then(|l| l.sender.lock().expect("sender lock").clone());
            if let Some(s) = sender {
                tokio::spawn(async move {
                    let _ = s.note_preferred(preferred).await;
                });
            }
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

    /// Whether region `region`'s connection is up. A region of the map without a connection
    /// gets one started (false until it is up): a peer's home region need not be ours.
    pub fn connected(&self, region: u32) -> bool {
        let up = self
            .links
            .lock()
            .expect("links lock")
            .get(&region)
            .map(|l| l.connected.load(Relaxed));
        match up {
            Some(up) => up,
            None => {
                if let Some(me) = self.me.upgrade() {
                    me.ensure(region);
                }
                false
            }
        }
    }

    /// Whether region `region`'s connection is up (none is started).
    fn link_up(&self, region: u32) -> bool {
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
        let was_up = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run_link(
            Arc::downgrade(self),
            r,
            sender.clone(),
            connected.clone(),
            was_up.clone(),
        ));
        links.insert(
            region,
            Link {
                sender: sender.clone(),
                connected,
                was_up,
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
    was_up: Arc<AtomicBool>,
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
                    was_up.store(true, Relaxed);
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

    fn map(regions: &[(u32, bool)]) -> RelayMap {
        let mut m = RelayMap::default();
        for &(id, avoid) in regions {
            m.regions.insert(
                id,
                RelayRegion {
                    region_id: id,
                    avoid,
                    ..RelayRegion::default()
                },
            );
        }
        m
    }

    fn ms(pairs: &[(u32, u64)]) -> BTreeMap<u32, Duration> {
        pairs
            .iter()
            .map(|&(r, m)| (r, Duration::from_millis(m)))
            .collect()
    }

    fn home(
        m: &RelayMap,
        current: u32,
        lat: &BTreeMap<u32, Duration>,
        down: Option<u64>,
        connected: &[u32],
    ) -> u32 {
        let up = |r: u32| connected.contains(&r);
        choose_home(&HomeInputs {
            map: m,
            current,
            latencies: lat,
            home_down_for: down.map(Duration::from_millis),
            connected: &up,
        })
    }

    #[test]
    fn unmeasured_home_is_the_lowest_region_not_avoided() {
        let m = map(&[(1, true), (2, false), (3, false)]);
        let none = BTreeMap::new();
        assert_eq!(home(&m, 0, &none, None, &[]), 2);
        assert_eq!(home(&map(&[(1, true), (5, true)]), 0, &none, None, &[]), 1);
        assert_eq!(home(&RelayMap::default(), 0, &none, None, &[]), 0);
        // A current home in the map stays; one that left the map is replaced.
        assert_eq!(home(&m, 3, &none, None, &[]), 3);
        assert_eq!(home(&m, 9, &none, None, &[]), 2);
        assert_eq!(default_home(&m), 2);
    }

    #[test]
    fn the_lowest_latency_wins_with_hysteresis() {
        let m = map(&[(1, false), (2, false), (3, true)]);
        // First measurement: the fastest, Avoid regions only when nothing else answered.
        assert_eq!(home(&m, 0, &ms(&[(1, 30), (2, 10), (3, 1)]), None, &[]), 2);
        assert_eq!(home(&m, 1, &ms(&[(1, 30), (2, 10), (3, 1)]), None, &[]), 2);
        assert_eq!(home(&m, 1, &ms(&[(3, 1)]), None, &[]), 3);
        // Hysteresis: 10 ms vs 14 ms is not clearly faster (not under 2/3); 9 ms is.
        assert_eq!(home(&m, 1, &ms(&[(1, 14), (2, 10)]), None, &[]), 1);
        assert_eq!(home(&m, 1, &ms(&[(1, 15), (2, 10)]), None, &[]), 1);
        assert_eq!(home(&m, 1, &ms(&[(1, 15), (2, 9)]), None, &[]), 2);
        // A home that did not answer, or an Avoid home while another answers, is replaced.
        assert_eq!(home(&m, 1, &ms(&[(2, 50)]), None, &[1]), 2);
        assert_eq!(home(&m, 3, &ms(&[(2, 50), (3, 1)]), None, &[]), 2);
        // Nothing answered: keep the home.
        assert_eq!(home(&m, 1, &BTreeMap::new(), None, &[]), 1);
    }

    #[test]
    fn a_home_down_for_long_fails_over_to_a_reachable_region() {
        let m = map(&[(1, false), (2, false), (3, false)]);
        let lat = ms(&[(1, 5), (2, 40), (3, 20)]);
        // Down, but not for long enough: the home stays.
        assert_eq!(home(&m, 1, &lat, Some(2_900), &[]), 1);
        // Down for more than 3 s: the fastest other region that answered.
        assert_eq!(home(&m, 1, &lat, Some(3_100), &[]), 3);
        // No other region answered: one whose connection is up, else stay.
        let only_home = ms(&[(1, 5)]);
        assert_eq!(home(&m, 1, &only_home, Some(3_100), &[2]), 2);
        assert_eq!(home(&m, 1, &only_home, Some(3_100), &[]), 1);
        assert_eq!(home(&map(&[(1, false)]), 1, &lat, Some(9_000), &[]), 1);
        // Unmeasured (the ID rule so far): fail over to a connected region.
        assert_eq!(home(&m, 1, &BTreeMap::new(), Some(3_100), &[3]), 3);
    }

    #[tokio::test]
    async fn links_keep_a_measured_home_across_netmaps_and_fail_over() {
        let mut m = map(&[(1, false), (2, false)]);
        for r in m.regions.values_mut() {
            r.nodes.push(crate::derp::map::RelayNode {
                name: format!("n{}", r.region_id),
                region_id: r.region_id,
                ipv4: Some(Ipv4Addr::LOCALHOST),
                derp_port: 1,
                ..Default::default()
            });
        }
        let (tx, _rx) = mpsc::channel(1);
        let links = RelayLinks::new(StaticSecret::from([7u8; 32]), tx);
        links.set_map(m.clone());
        assert_eq!(links.home(), Some(1));
        links.set_latencies(ms(&[(1, 20), (2, 5)]));
        assert_eq!(links.home(), Some(2));
        // A new netmap with the same map keeps the measured home.
        links.set_map(m.clone());
        assert_eq!(links.home(), Some(2));
        // Nothing listens on port 1: the home connection is down. After 3 s, failover.
        let t0 = Instant::now();
        assert!(
            !links.check_home(t0),
            "never connected: not a lost connection"
        );
        assert_eq!(links.home(), Some(2));
        links.check_home(t0 + Duration::from_millis(3_500));
        assert_eq!(links.home(), Some(1));
        let st = links.status();
        assert!(st.iter().any(|l| l.region == 1 && l.home), "{st:?}");
        assert!(st.iter().any(|l| l.region == 2 && !l.home), "{st:?}");
    }
}
