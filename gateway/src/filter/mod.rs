//! The node's packet filter: what the tailnet policy lets in through the tunnel.
//!
//! Every packet a peer sends is decrypted by the daemon, and the filter decides right there,
//! before the TUN write — for traffic to the node itself and for traffic it routes (subnet
//! routes, 4via6, exit), so a dropped packet never costs a TUN write or an XDP run. Without
//! rules (static mode, or a policy without `acls`) everything passes. With rules it is default
//! deny and stateful:
//!
//! - a packet of a flow this node started (seen going out) passes: replies to allowed flows;
//! - otherwise the [`classifier`] looks for a rule that accepts it; the flow is then
//!   remembered, so its later packets skip the classifier until the rules change;
//! - ICMP errors pass (path MTU discovery needs them), as do IPv4/IPv6 fragments after the
//!   first (their transport header is in the first one), as in Tailscale;
//! - anything else is dropped and counted.
//!
//! A new rule set applies to the next packet; flows it still accepts go on, flows it no
//! longer accepts stop, flows the node started keep working.

pub mod classifier;
pub mod flows;
pub mod packet;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::control::proto::FilterRule;
use classifier::Classifier;
use flows::{FlowKey, FlowTable};
use packet::IcmpKind;

/// A rule set in force.
#[derive(Debug)]
pub struct Rules {
    rules: Vec<FilterRule>,
    classifier: Classifier,
    generation: u32,
    /// New flows accepted, by the rule's `acls` index.
    accepted: BTreeMap<u32, AtomicU64>,
}

/// What to do with an inbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it in.
    Accept,
    /// No rule accepts it and it is not part of a flow this node started.
    DropNoRule,
    /// It could not be read as an IP packet.
    DropMalformed,
}

/// The filter's counters and size, for `tailgate status` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterStatus {
    /// Whether rules are in force (false: everything passes).
    pub enabled: bool,
    /// Rules in force.
    pub rules: usize,
    /// Classifier atoms (rule × destination entries).
    pub atoms: usize,
    /// Flows remembered.
    pub flows: usize,
    /// New flows accepted, by `acls` index of the policy.
    pub accepted_by_acl: BTreeMap<u32, u64>,
    /// Packets of known flows let in.
    pub accepted_established: u64,
    /// Packets dropped because no rule accepts them.
    pub dropped_no_rule: u64,
    /// Packets dropped because they are not valid IP.
    pub dropped_malformed: u64,
}

/// The last flow one data-path task let through (or noted), so that a run of packets of one
/// flow — a TCP transfer — skips the shared flow table and its lock. The table entry is still
/// refreshed at least once a [`FlowCache::REFRESH`], and a rules change misses the cache.
#[derive(Debug, Default)]
pub struct FlowCache {
    last: Option<(FlowKey, u32, Instant)>,
}

impl FlowCache {
    /// How long a cached flow skips the table.
    pub const REFRESH: Duration = Duration::from_secs(1);

    fn hit(&self, key: &FlowKey, generation: u32, now: Instant) -> bool {
        matches!(&self.last, Some((k, g, at)) if k == key && *g == generation
            && now.saturating_duration_since(*at) < Self::REFRESH)
    }

    fn remember(&mut self, key: FlowKey, generation: u32, now: Instant) {
        if !self.hit(&key, generation, now) {
            self.last = Some((key, generation, now));
        }
    }
}

/// The filter of one device.
#[derive(Debug, Default)]
pub struct PacketFilter {
    rules: RwLock<Option<Arc<Rules>>>,
    flows: FlowTable,
    generation: AtomicU64,
    established: AtomicU64,
    no_rule: AtomicU64,
    malformed: AtomicU64,
}

impl PacketFilter {
    /// Puts `rules` in force (`None`: allow everything); the same rules again change nothing.
    pub fn set_rules(&self, rules: Option<&[FilterRule]>) {
        let mut slot = self.rules.write().unwrap_or_else(PoisonError::into_inner);
        let same = match (&*slot, rules) {
            (None, None) => true,
            (Some(cur), Some(new)) => cur.rules == new,
            _ => false,
        };
        if same {
            return;
        }
        *slot = rules.map(|r| {
            let generation = self.generation.fetch_add(1, Ordering::Relaxed) as u32 + 1;
            Arc::new(Rules {
                rules: r.to_vec(),
                classifier: Classifier::new(r),
                generation,
                accepted: r.iter().map(|x| (x.acl, AtomicU64::new(0))).collect(),
            })
        });
        match &*slot {
            Some(r) => log::info!(
                "packet filter: {} rule(s), {} atom(s)",
                r.rules.len(),
                r.classifier.atoms()
            ),
            None => log::info!("packet filter: off (the policy allows everything)"),
        }
    }

    /// The rules in force, taken once per batch of packets.
    pub fn snapshot(&self) -> Option<Arc<Rules>> {
        self.rules
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Decides on a decrypted packet from a peer under `rules` (from [`Self::snapshot`]);
    /// `cache` is the calling task's (see [`FlowCache`]).
    pub fn inbound(
        &self,
        rules: &Rules,
        pkt: &[u8],
        cache: &mut FlowCache,
        now: Instant,
    ) -> Verdict {
        let Ok(info) = packet::parse(pkt) else {
            self.malformed.fetch_add(1, Ordering::Relaxed);
            return Verdict::DropMalformed;
        };
        if info.later_fragment || info.icmp == Some(IcmpKind::Error) {
            self.established.fetch_add(1, Ordering::Relaxed);
            return Verdict::Accept;
        }
        let key = FlowKey::inbound(&info);
        if cache.hit(&key, rules.generation, now) || self.flows.admits(&key, rules.generation) {
            cache.remember(key, rules.generation, now);
            self.established.fetch_add(1, Ordering::Relaxed);
            return Verdict::Accept;
        }
        match rules.classifier.accepts(&info) {
            Some(acl) => {
                if let Some(c) = rules.accepted.get(&acl) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                self.flows.insert(key, rules.generation);
                cache.remember(key, rules.generation, now);
                Verdict::Accept
            }
            None => {
                self.no_rule.fetch_add(1, Ordering::Relaxed);
                Verdict::DropNoRule
            }
        }
    }

    /// Notes a packet this node sends into the tunnel, so that its replies pass; `cache` is
    /// the calling task's.
    pub fn outbound(&self, pkt: &[u8], cache: &mut FlowCache, now: Instant) {
        if let Some(key) = packet::parse(pkt)
            .ok()
            .and_then(|info| FlowKey::replies_to(&info))
        {
            if !cache.hit(&key, 0, now) {
                self.flows.insert(key, 0);
                cache.remember(key, 0, now);
            }
        }
    }

    /// Forgets idle flows.
    pub fn expire(&self) {
        self.flows.expire();
    }

    /// Counters and sizes.
    pub fn status(&self) -> FilterStatus {
        let rules = self.snapshot();
        FilterStatus {
            enabled: rules.is_some(),
            rules: rules.as_ref().map_or(0, |r| r.rules.len()),
            atoms: rules.as_ref().map_or(0, |r| r.classifier.atoms()),
            flows: self.flows.len(),
            accepted_by_acl: rules
                .as_ref()
                .map(|r| {
                    r.accepted
                        .iter()
                        .map(|(k, v)| (*k, v.load(Ordering::Relaxed)))
                        .collect()
                })
                .unwrap_or_default(),
            accepted_established: self.established.load(Ordering::Relaxed),
            dropped_no_rule: self.no_rule.load(Ordering::Relaxed),
            dropped_malformed: self.malformed.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::packet::build::v4;
    use super::*;
    use crate::control::proto::DstPorts;

    fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut l4 = sport.to_be_bytes().to_vec();
        l4.extend_from_slice(&dport.to_be_bytes());
        l4.extend_from_slice(&[0; 16]);
        v4(6, src, dst, &l4)
    }
    fn echo(kind: u8, src: [u8; 4], dst: [u8; 4], id: u16) -> Vec<u8> {
        let mut l4 = vec![kind, 0, 0, 0];
        l4.extend_from_slice(&id.to_be_bytes());
        l4.extend_from_slice(&[0, 1]);
        v4(1, src, dst, &l4)
    }

    /// One inbound packet, as a task without a cached flow sees it.
    fn inbound(f: &PacketFilter, r: &Rules, pkt: &[u8]) -> Verdict {
        f.inbound(r, pkt, &mut FlowCache::default(), Instant::now())
    }
    /// One outbound packet, as a task without a cached flow sees it.
    fn outbound(f: &PacketFilter, pkt: &[u8]) {
        f.outbound(pkt, &mut FlowCache::default(), Instant::now());
    }

    const ME: [u8; 4] = [100, 64, 0, 2];
    const PEER: [u8; 4] = [100, 64, 0, 1];
    const OTHER: [u8; 4] = [100, 64, 0, 3];

    fn ssh_from_peer() -> Vec<FilterRule> {
        vec![FilterRule {
            acl: 4,
            src: vec!["100.64.0.1/32".parse().unwrap()],
            dst: vec![DstPorts {
                net: "100.64.0.2/32".parse().unwrap(),
                first: 22,
                last: 22,
            }],
            protos: vec![],
        }]
    }

    #[test]
    fn default_deny_with_rules_and_replies_to_own_flows() {
        let f = PacketFilter::default();
        assert!(f.snapshot().is_none(), "no rules: allow all");
        f.set_rules(Some(&ssh_from_peer()));
        let r = f.snapshot().unwrap();
        assert_eq!(inbound(&f, &r, &tcp(PEER, 5000, ME, 22)), Verdict::Accept);
        assert_eq!(inbound(&f, &r, &tcp(PEER, 5000, ME, 22)), Verdict::Accept);
        assert_eq!(
            inbound(&f, &r, &tcp(PEER, 5000, ME, 80)),
            Verdict::DropNoRule
        );
        assert_eq!(
            inbound(&f, &r, &tcp(OTHER, 5000, ME, 22)),
            Verdict::DropNoRule
        );
        // Ping from the peer matches by address; from elsewhere it does not.
        assert_eq!(inbound(&f, &r, &echo(8, PEER, ME, 7)), Verdict::Accept);
        assert_eq!(inbound(&f, &r, &echo(8, OTHER, ME, 7)), Verdict::DropNoRule);
        // This node pings and connects out: the replies pass.
        assert_eq!(inbound(&f, &r, &echo(0, OTHER, ME, 9)), Verdict::DropNoRule);
        outbound(&f, &echo(8, ME, OTHER, 9));
        assert_eq!(inbound(&f, &r, &echo(0, OTHER, ME, 9)), Verdict::Accept);
        outbound(&f, &tcp(ME, 40000, OTHER, 443));
        assert_eq!(
            inbound(&f, &r, &tcp(OTHER, 443, ME, 40000)),
            Verdict::Accept
        );
        assert_eq!(
            inbound(&f, &r, &tcp(OTHER, 443, ME, 40001)),
            Verdict::DropNoRule
        );
        assert_eq!(inbound(&f, &r, &[0x45, 1, 2]), Verdict::DropMalformed);
        let st = f.status();
        assert_eq!(st.accepted_by_acl.get(&4), Some(&2), "{st:?}");
        assert_eq!((st.dropped_no_rule, st.dropped_malformed), (5, 1));
    }

    #[test]
    fn new_rules_keep_own_flows_and_recheck_accepted_ones() {
        let f = PacketFilter::default();
        f.set_rules(Some(&ssh_from_peer()));
        let r = f.snapshot().unwrap();
        assert_eq!(inbound(&f, &r, &tcp(PEER, 5000, ME, 22)), Verdict::Accept);
        // This node answers the accepted flow: that does not make the flow its own.
        outbound(&f, &tcp(ME, 22, PEER, 5000));
        outbound(&f, &tcp(ME, 40000, OTHER, 443));
        // The same rules again change nothing; other rules drop the accepted flow.
        f.set_rules(Some(&ssh_from_peer()));
        assert_eq!(f.snapshot().unwrap().generation, r.generation);
        let mut other = ssh_from_peer();
        other[0].dst[0].first = 2222;
        other[0].dst[0].last = 2222;
        f.set_rules(Some(&other));
        let r2 = f.snapshot().unwrap();
        assert_eq!(
            inbound(&f, &r2, &tcp(PEER, 5000, ME, 22)),
            Verdict::DropNoRule
        );
        assert_eq!(
            inbound(&f, &r2, &tcp(OTHER, 443, ME, 40000)),
            Verdict::Accept
        );
        f.set_rules(None);
        assert!(f.snapshot().is_none());
    }
}
