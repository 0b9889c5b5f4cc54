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
                // A reply to a flow the rules accepted stays accepted-by-rules (re-checked
                // when the rules change); only a flow this node starts is its own.
                if generation == 0 || f.generation == generation || f.generation == 0 {
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
        // Started here (0) is never turned into accepted-by-rules, nor the other way round.
        if entry.generation != 0 && generation != 0 {
            entry.generation = generation;
        }
    }

    /// Forgets idle flows; when still full, flows the rules accepted go before the node's own,
    /// least recently seen first, until a quarter of the room is free.
    fn evict(flows: &mut HashMap<FlowKey, Flow>, now: u32) {
        flows.retain(|k, f| !idle(k, f, now));
        if flows.len() < MAX_FLOWS {
            return;
        }
        let mut order: Vec<(bool, u32, FlowKey)> = flows
            .iter()
            .map(|(k, f)| (f.generation == 0, f.last_seen.load(Ordering::Relaxed), *k))
            .collect();
        order.sort_unstable_by_key(|(own, seen, _)| (*own, *seen));
        for (_, _, k) in order.into_iter().take(MAX_FLOWS / 4) {
            flows.remove(&k);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> FlowKey {
        FlowKey {
            proto: 17,
            src: IpAddr::from([100, 64, 0, 1]),
            sport: i as u16,
            dst: IpAddr::from([100, 64, 0, 2]),
            dport: 1000 + (i >> 16) as u16,
        }
    }

    #[test]
    fn a_full_table_sheds_accepted_flows_before_its_own() {
        let t = FlowTable::default();
        let own = FlowKey { sport: 9, ..key(0) };
        t.insert(own, 0);
        for i in 0..MAX_FLOWS as u32 + 10 {
            t.insert(key(i), 1);
        }
        assert!(
            t.len() < MAX_FLOWS && t.len() > MAX_FLOWS / 2,
            "{}",
            t.len()
        );
        assert!(t.admits(&own, 7), "the node's own flow survives");
    }
}
