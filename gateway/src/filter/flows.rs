//! Connection state for the filter: flows this node started (their replies pass whatever the
//! rules say) and flows the rules accepted (later packets skip the classifier until the rules
//! change).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use super::packet::{IcmpKind, PacketInfo};

/// Most flows remembered; beyond it the oldest go first.
pub const MAX_FLOWS: usize = 65_536;

/// Idle time after which a flow is forgotten (TCP).
const TCP_IDLE: Duration = Duration::from_secs(600);
/// Idle time for everything else.
const OTHER_IDLE: Duration = Duration::from_secs(120);

/// A flow as an inbound packet of it looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    proto: u8,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
}

impl FlowKey {
    /// The key of an inbound packet (an echo reply is keyed by its identifier).
    pub fn inbound(p: &PacketInfo) -> FlowKey {
        let (sport, dport) = match p.icmp {
            Some(IcmpKind::EchoReply(id)) => (id, id),
            _ => (p.sport, p.dport),
        };
        FlowKey {
            proto: p.proto,
            src: p.src,
            sport,
            dst: p.dst,
            dport,
        }
    }

    /// The key replies to an outbound packet will have (`None`: nothing to expect, such as
    /// an echo reply going out).
    pub fn replies_to(p: &PacketInfo) -> Option<FlowKey> {
        let (sport, dport) = match p.icmp {
            Some(IcmpKind::EchoRequest(id)) => (id, id),
            Some(_) => return None,
            None => (p.dport, p.sport),
        };
        Some(FlowKey {
            proto: p.proto,
            src: p.dst,
            sport,
            dst: p.src,
            dport,
        })
    }
}

/// What the table knows of a flow.
#[derive(Debug)]
struct Flow {
    /// Seconds since the table was made, when the flow was last seen.
    last_seen: AtomicU32,
    /// 0: this node started it. Otherwise the rules generation that accepted it.
    generation: u32,
}

/// The flows, shared by the inbound and outbound paths.
#[derive(Debug)]
pub struct FlowTable {
    epoch: Instant,
    flows: RwLock<HashMap<FlowKey, Flow>>,
}

impl Default for FlowTable {
    fn default() -> Self {
        FlowTable {
            epoch: Instant::now(),
            flows: RwLock::new(HashMap::new()),
        }
    }
}

impl FlowTable {
    fn now(&self) -> u32 {
        self.epoch.elapsed().as_secs() as u32
    }

    /// Whether `key` is a flow this node started, or one accepted under rules `generation`;
    /// refreshes it.
    pub fn admits(&self, key: &FlowKey, generation: u32) -> bool {
        let flows = self.flows.read().unwrap_or_else(PoisonError::into_inner);
        match flows.get(key) {
            Some(f) if f.generation == 0 || f.generation == generation => {
                f.last_seen.store(self.now(), Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Remembers a flow (`generation` 0: started here).
    pub fn insert(&self, key: FlowKey, generation: u32) {
        let now = self.now();
        {
            let flows = self.flows.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(f) = flows.get(&key) {
                if f.generation == generation || f.generation == 0 {
                    f.last_seen.store(now, Ordering::Relaxed);
                    return;
                }
            }
        }
        let mut flows = self.flows.write().unwrap_or_else(PoisonError::into_inner);
        if flows.len() >= MAX_FLOWS {
            Self::evict(&mut flows, now);
        }
        let entry = flows.entry(key).or_insert(Flow {
            last_seen: AtomicU32::new(now),
            generation,
        });
        entry.last_seen.store(now, Ordering::Relaxed);
        // Started here (0) is never downgraded to accepted-by-rules.
        if entry.generation != 0 {
            entry.generation = generation;
        }
    }

    /// Forgets idle flows; when still full, the older half.
    fn evict(flows: &mut HashMap<FlowKey, Flow>, now: u32) {
        flows.retain(|k, f| !idle(k, f, now));
        if flows.len() >= MAX_FLOWS {
            let mut ages: Vec<u32> = flows
                .values()
                .map(|f| f.last_seen.load(Ordering::Relaxed))
                .collect();
            let mid = ages.len() / 2;
            let (_, cut, _) = ages.select_nth_unstable(mid);
            let cut = *cut;
            flows.retain(|_, f| f.last_seen.load(Ordering::Relaxed) > cut);
        }
    }

    /// Forgets idle flows (called from the daemon's timer).
    pub fn expire(&self) {
        let now = self.now();
        let mut flows = self.flows.write().unwrap_or_else(PoisonError::into_inner);
        flows.retain(|k, f| !idle(k, f, now));
    }

    /// Number of flows remembered.
    pub fn len(&self) -> usize {
        self.flows
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// True when no flow is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn idle(k: &FlowKey, f: &Flow, now: u32) -> bool {
    let limit = if k.proto == 6 { TCP_IDLE } else { OTHER_IDLE };
    now.saturating_sub(f.last_seen.load(Ordering::Relaxed)) > limit.as_secs() as u32
}
