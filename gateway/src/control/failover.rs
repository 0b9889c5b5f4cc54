//! Client-side HA failover, as pure functions of the netmap: which routers to probe through the
//! tunnel, and which router each subnet route goes to when some of them went silent.
//!
//! The server's primary is followed unless it is silent (see [`crate::liveness`]); then the
//! prefix moves at once to the most preferred approved standby that still answers (higher
//! `route_priority` first, then the lower node id — the server's own tie-break once it notices
//! the failure, so its netmap confirms the switch instead of moving traffic again).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::proto::{NetMap, NodeView};

/// Node ids.
pub type NodeId = u64;

/// Approved subnet routes (no exit routes) of `peer`, and whether it is primary for each.
fn subnet_routes(peer: &NodeView) -> impl Iterator<Item = (IpNet, bool)> + '_ {
    peer.routes
        .iter()
        .filter(|r| r.approved && r.prefix.prefix_len() != 0)
        .map(|r| (r.prefix.trunc(), r.primary))
}

/// Every approved subnet prefix with its candidates: (node, is primary).
fn candidates(nm: &NetMap) -> BTreeMap<IpNet, Vec<(&NodeView, bool)>> {
    let mut by_prefix: BTreeMap<IpNet, Vec<(&NodeView, bool)>> = BTreeMap::new();
    for p in &nm.peers {
        for (prefix, primary) in subnet_routes(p) {
            by_prefix.entry(prefix).or_default().push((p, primary));
        }
    }
    by_prefix
}

/// Routers worth probing: primaries of a prefix that has at least one standby, with their
/// tailnet address.
pub fn probe_targets(nm: &NetMap) -> Vec<(NodeId, IpAddr)> {
    let mut out: Vec<(NodeId, IpAddr)> = candidates(nm)
        .values()
        .filter(|c| c.len() > 1)
        .flat_map(|c| c.iter().filter(|(_, primary)| *primary))
        .filter_map(|(p, _)| {
            let addr = p.ipv4().map(IpAddr::V4).or(p.ipv6().map(IpAddr::V6))?;
            Some((p.id, addr))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The subnet routes to install per peer: the netmap's primaries, except that prefixes of a
/// silent primary go to the best standby that is not silent (none: they stay put).
pub fn effective_routes(nm: &NetMap, silent: &BTreeSet<NodeId>) -> BTreeMap<NodeId, Vec<IpNet>> {
    let mut out: BTreeMap<NodeId, Vec<IpNet>> = BTreeMap::new();
    for (prefix, cands) in candidates(nm) {
        let Some((primary, _)) = cands.iter().find(|(_, is_primary)| *is_primary) else {
            continue;
        };
        let chosen = if silent.contains(&primary.id) {
            cands
                .iter()
                .filter(|(p, _)| !silent.contains(&p.id))
                .min_by_key(|(p, _)| (std::cmp::Reverse(p.route_priority), p.id))
                .map_or(primary.id, |(p, _)| p.id)
        } else {
            primary.id
        };
        out.entry(chosen).or_default().push(prefix);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::proto::{DnsConfig, RouteState};

    fn node(id: u64, prio: u32, routes: &[(&str, bool)]) -> NodeView {
        let addr = format!("100.64.0.{id}/32");
        NodeView {
            routes: routes
                .iter()
                .map(|(p, primary)| RouteState {
                    prefix: p.parse().unwrap(),
                    approved: true,
                    primary: *primary,
                })
                .collect(),
            route_priority: prio,
            ..NodeView::for_tests(id, &format!("n{id}"), &[&addr])
        }
    }

    fn netmap(peers: Vec<NodeView>) -> NetMap {
        NetMap {
            version: 1,
            self_node: node(99, 0, &[]),
            peers,
            dns: DnsConfig {
                domain: "ts".into(),
            },
            keepalive_interval_ms: 1000,
            packet_filter: None,
            relay_map: None,
        }
    }

    const LAN: &str = "192.168.1.0/24";
    const SOLO: &str = "10.9.0.0/16";

    fn ha_netmap() -> NetMap {
        netmap(vec![
            node(1, 10, &[(LAN, true), (SOLO, true)]),
            node(2, 0, &[(LAN, false)]),
            node(3, 5, &[(LAN, false)]),
        ])
    }

    #[test]
    fn only_primaries_with_standbys_are_probed() {
        let nm = ha_netmap();
        assert_eq!(
            probe_targets(&nm),
            vec![(1, "100.64.0.1".parse::<IpAddr>().unwrap())]
        );
        let single = netmap(vec![node(1, 0, &[(SOLO, true)])]);
        assert!(probe_targets(&single).is_empty());
    }

    #[test]
    fn silent_primary_hands_its_prefixes_to_the_best_standby() {
        let nm = ha_netmap();
        let lan: IpNet = LAN.parse().unwrap();
        let solo: IpNet = SOLO.parse().unwrap();
        let normal = effective_routes(&nm, &BTreeSet::new());
        assert_eq!(normal[&1], vec![solo, lan]);
        assert!(!normal.contains_key(&2) && !normal.contains_key(&3));

        // Node 1 silent: LAN goes to node 3 (priority 5 beats 0); SOLO has no standby.
        let moved = effective_routes(&nm, &BTreeSet::from([1]));
        assert_eq!(moved[&3], vec![lan]);
        assert_eq!(moved[&1], vec![solo]);
        // Nodes 1 and 3 silent: node 2.
        let moved = effective_routes(&nm, &BTreeSet::from([1, 3]));
        assert_eq!(moved[&2], vec![lan]);
        // Everyone silent: stay with the server's choice.
        let stuck = effective_routes(&nm, &BTreeSet::from([1, 2, 3]));
        assert_eq!(stuck[&1], vec![solo, lan]);
        // A silent standby changes nothing.
        assert_eq!(effective_routes(&nm, &BTreeSet::from([3])), normal);
    }

    #[test]
    fn equal_priorities_fall_back_to_the_lowest_id() {
        let nm = netmap(vec![
            node(4, 0, &[(LAN, true)]),
            node(7, 0, &[(LAN, false)]),
            node(6, 0, &[(LAN, false)]),
        ]);
        let moved = effective_routes(&nm, &BTreeSet::from([4]));
        assert_eq!(moved[&6], vec![LAN.parse::<IpNet>().unwrap()]);
    }
}
