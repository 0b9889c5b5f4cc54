//! `tailgate netcheck`: what the network between this node and the relay regions looks like,
//! like `tailscale netcheck`. STUN binding requests go from one fresh UDP socket per address
//! family to every STUN server of the relay map; the answers say whether UDP gets out, the
//! public address and port, whether the NAT maps one socket to different ports for different
//! destinations (then peers cannot reach it directly), and each region's latency.
//!
//! The same measurement runs in the daemon every [`LATENCY_EVERY`] (and when the home relay
//! connection is lost) to choose the home relay region: see [`keep_home`] and
//! [`crate::traversal::relay::choose_home`].

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::derp::map::RelayMap;
use crate::stun::codec::{binding_request, parse_response, TxId};
use crate::traversal::relay::RelayLinks;

/// Longest a whole check takes (it ends sooner when every server answered).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the daemon measures relay latencies for its home region choice.
pub const LATENCY_EVERY: Duration = Duration::from_secs(20);
/// How often the daemon looks at its home relay connection.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// Longest wait for the gateway's port-mapping answers.
const PORTMAP_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a relay node's name to resolve.
const DNS_TIMEOUT: Duration = Duration::from_secs(1);
/// First retransmission time; it doubles up to [`MAX_RTO`].
const INITIAL_RTO: Duration = Duration::from_millis(100);
/// Longest time between retransmissions.
const MAX_RTO: Duration = Duration::from_millis(800);

/// Which port-mapping protocols the local gateway answered.
pub use crate::portmap::Probe as PortMapProbe;

/// One region's measured latency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionLatency {
    /// Region ID.
    pub region_id: u32,
    /// Region code.
    pub code: String,
    /// Region name.
    pub name: String,
    /// Best STUN round-trip time, milliseconds; `None` when no server of the region answered.
    pub latency_ms: Option<f64>,
    /// The region is marked `Avoid` (never preferred while another answers).
    pub avoid: bool,
}

/// What `tailgate netcheck` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// A STUN server answered over IPv4.
    pub udp_v4: bool,
    /// A STUN server answered over IPv6.
    pub udp_v6: bool,
    /// The public IPv4 address and port STUN servers saw (the first answer's).
    pub global_v4: Option<SocketAddr>,
    /// The public IPv6 address and port STUN servers saw (the first answer's).
    pub global_v6: Option<SocketAddr>,
    /// The OS can use IPv6 (a socket binds to `::1`).
    pub os_has_ipv6: bool,
    /// Two STUN servers (different address or port) saw one socket with different mapped
    /// addresses: a "hard" NAT peers cannot punch through. `None` when fewer than two
    /// servers answered.
    pub mapping_varies_by_dest_ip: Option<bool>,
    /// Which port-mapping protocols answered; `None` when not checked.
    pub portmap: Option<PortMapProbe>,
    /// The lowest-latency region not marked `Avoid` (an `Avoid` one only when nothing else
    /// answered).
    pub preferred_region: Option<u32>,
    /// Every region, those that answered first, by latency.
    pub regions: Vec<RegionLatency>,
}

/// One STUN answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The region of the server.
    pub region: u32,
    /// The server asked.
    pub server: SocketAddr,
    /// The address it saw the request come from.
    pub mapped: SocketAddr,
    /// Round-trip time.
    pub rtt: Duration,
}

/// How to run a check.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Longest time for the whole check.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Whether different servers saw different mapped addresses, over the answers of one family
/// (one socket): `None` with fewer than two distinct servers (address or port), else whether
/// the first answers of any two differ.
pub fn mapping_varies(answers: &[Answer]) -> Option<bool> {
    let mut first: Vec<(SocketAddr, SocketAddr)> = Vec::new();
    for a in answers {
        if !first.iter().any(|(s, _)| *s == a.server) {
            first.push((a.server, a.mapped));
        }
    }
    if first.len() < 2 {
        return None;
    }
    Some(first.iter().any(|(_, m)| *m != first[0].1))
}

/// The best round-trip time per region among `answers`.
pub fn region_latencies(answers: &[Answer]) -> BTreeMap<u32, Duration> {
    let mut out = BTreeMap::new();
    for a in answers {
        out.entry(a.region)
            .and_modify(|d: &mut Duration| *d = (*d).min(a.rtt))
            .or_insert(a.rtt);
    }
    out
}

/// The report for `answers` (in arrival order) to a check of `map`, without port mapping.
pub fn report(map: &RelayMap, answers: &[Answer], os_has_ipv6: bool) -> Report {
    let (v4, v6): (Vec<Answer>, Vec<Answer>) = answers.iter().partition(|a| a.server.is_ipv4());
    let varies = match (mapping_varies(&v4), mapping_varies(&v6)) {
        (Some(a), Some(b)) => Some(a || b),
        (a, b) => a.or(b),
    };
    let lat = region_latencies(answers);
    let mut regions: Vec<RegionLatency> = map
        .regions
        .values()
        .map(|r| RegionLatency {
            region_id: r.region_id,
            code: r.region_code.clone(),
            name: r.region_name.clone(),
            latency_ms: lat.get(&r.region_id).map(|d| d.as_secs_f64() * 1e3),
            avoid: r.avoid,
        })
        .collect();
    regions.sort_by(|a, b| match (a.latency_ms, b.latency_ms) {
        (Some(x), Some(y)) => x.total_cmp(&y).then(a.region_id.cmp(&b.region_id)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.region_id.cmp(&b.region_id),
    });
    let preferred = regions
        .iter()
        .find(|r| r.latency_ms.is_some() && !r.avoid)
        .or_else(|| regions.iter().find(|r| r.latency_ms.is_some()))
        .map(|r| r.region_id);
    Report {
        udp_v4: !v4.is_empty(),
        udp_v6: !v6.is_empty(),
        global_v4: v4.first().map(|a| a.mapped),
        global_v6: v6.first().map(|a| a.mapped),
        os_has_ipv6,
        mapping_varies_by_dest_ip: varies,
        portmap: None,
        preferred_region: preferred,
        regions,
    }
}

impl Report {
    /// The text `tailgate netcheck` prints (Tailscale's layout).
    pub fn to_text(&self) -> String {
        let mut s = String::from("Report:\n");
        let _ = writeln!(s, "\t* UDP: {}", self.udp_v4 || self.udp_v6);
        match self.global_v4 {
            Some(a) if self.udp_v4 => {
                let _ = writeln!(s, "\t* IPv4: yes, {a}");
            }
            _ => s.push_str("\t* IPv4: (no addr found)\n"),
        }
        match (self.global_v6, self.os_has_ipv6) {
            (Some(a), _) if self.udp_v6 => {
                let _ = writeln!(s, "\t* IPv6: yes, {a}");
            }
            (_, true) => s.push_str("\t* IPv6: no, but OS has support\n"),
            (_, false) => s.push_str("\t* IPv6: no, unavailable in OS\n"),
        }
        let varies = match self.mapping_varies_by_dest_ip {
            Some(v) => v.to_string(),
            None => "unknown (fewer than two STUN servers answered)".into(),
        };
        let _ = writeln!(s, "\t* MappingVariesByDestIP: {varies}");
        let portmap = match self.portmap {
            None => "not checked".to_string(),
            Some(p) => {
                let names: Vec<&str> = [(p.upnp, "UPnP"), (p.pmp, "NAT-PMP"), (p.pcp, "PCP")]
                    .into_iter()
                    .filter_map(|(on, n)| on.then_some(n))
                    .collect();
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            }
        };
        let _ = writeln!(s, "\t* PortMapping: {portmap}");
        match self
            .preferred_region
            .and_then(|id| self.regions.iter().find(|r| r.region_id == id))
        {
            Some(r) => {
                let _ = writeln!(
                    s,
                    "\t* Nearest relay: {} ({})",
                    display_name(r),
                    r.region_id
                );
            }
            None => s.push_str("\t* Nearest relay: none (no region answered)\n"),
        }
        s.push_str("\t* Relay latency:\n");
        for r in &self.regions {
            let lat = match r.latency_ms {
                Some(ms) => format!("{ms:.1}ms"),
                None => "no answer".into(),
            };
            let avoid = if r.avoid { ", avoid" } else { "" };
            let _ = writeln!(
                s,
                "\t\t- {} {}: {lat} ({}{avoid})",
                r.region_id,
                r.code,
                display_name(r)
            );
        }
        s
    }

    /// The measured latencies by region (regions that answered).
    pub fn latencies(&self) -> BTreeMap<u32, Duration> {
        self.regions
            .iter()
            .filter_map(|r| {
                r.latency_ms
                    .map(|ms| (r.region_id, Duration::from_secs_f64(ms / 1e3)))
            })
            .collect()
    }
}

fn display_name(r: &RegionLatency) -> &str {
    if r.name.is_empty() {
        &r.code
    } else {
        &r.name
    }
}

/// Whether the OS can use IPv6 at all.
pub fn os_has_ipv6() -> bool {
    std::net::UdpSocket::bind("[::1]:0").is_ok()
}

/// The STUN servers of `map`: (region, address), without duplicates. Nodes with fixed
/// addresses are not looked up in DNS; others are, each for at most [`DNS_TIMEOUT`]. IPv6
/// servers only when `ipv6`.
async fn targets(map: &RelayMap, ipv6: bool) -> Vec<(u32, SocketAddr)> {
    let mut out: Vec<(u32, SocketAddr)> = Vec::new();
    let mut lookups = tokio::task::JoinSet::new();
    for region in map.regions.values() {
        for node in &region.nodes {
            let Some(port) = node.stun_port() else {
                continue;
            };
            let fixed = node.fixed_addrs();
            if fixed.is_empty() {
                let id = region.region_id;
                let host = format!("{}:{port}", node.host_name);
                lookups.spawn(async move {
                    let found = tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host(host))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .map(|a| a.collect::<Vec<_>>())
                        .unwrap_or_default();
                    (id, found)
                });
            } else {
                out.extend(
                    fixed
                        .into_iter()
                        .map(|ip| (region.region_id, SocketAddr::new(ip, port))),
                );
            }
        }
    }
    while let Some(r) = lookups.join_next().await {
        if let Ok((id, addrs)) = r {
            out.extend(addrs.into_iter().map(|a| (id, a)));
        }
    }
    out.retain(|(_, a)| ipv6 || a.is_ipv4());
    let mut seen = Vec::new();
    out.retain(|(_, a)| {
        let new = !seen.contains(a);
        seen.push(*a);
        new
    });
    out
}

/// Sends binding requests from `socket` to every target (retransmitting to those that did not
/// answer) until each answered or `deadline`; the answers in arrival order.
async fn probe_family(
    socket: UdpSocket,
    targets: &[(u32, SocketAddr)],
    deadline: Instant,
) -> Vec<Answer> {
    let mut answers = Vec::new();
    if targets.is_empty() {
        return answers;
    }
    let mut answered = vec![false; targets.len()];
    let mut pending: HashMap<TxId, (usize, Instant)> = HashMap::new();
    let mut rto = INITIAL_RTO;
    let mut next_send = Instant::now();
    let mut buf = [0u8; 1500];
    loop {
        let now = Instant::now();
        if now >= deadline || answered.iter().all(|a| *a) {
            return answers;
        }
        if now >= next_send {
            for (i, (_, server)) in targets.iter().enumerate() {
                if answered[i] {
                    continue;
                }
                let tx = crate::stun::client::new_txid();
                match socket.send_to(&binding_request(&tx), server).await {
                    Ok(_) => {
                        pending.insert(tx, (i, Instant::now()));
                    }
                    Err(e) => log::debug!("netcheck: STUN request to {server}: {e}"),
                }
            }
            next_send = now + rto;
            rto = (rto * 2).min(MAX_RTO);
        }
        let (n, from) = match tokio::time::timeout_at(
            next_send.min(deadline),
            socket.recv_from(&mut buf),
        )
        .await
        {
            Err(_) => continue,
            Ok(Err(_)) => continue, // e.g. ICMP port unreachable from an earlier send
            Ok(Ok(r)) => r,
        };
        let Ok((tx, mapped)) = parse_response(&buf[..n]) else {
            continue;
        };
        let Some(&(i, sent)) = pending.get(&tx) else {
            continue;
        };
        let (region, server) = targets[i];
        if crate::io::udp::canonical(from) != server {
            continue;
        }
        pending.remove(&tx);
        answered[i] = true;
        answers.push(Answer {
            region,
            server,
            mapped: crate::io::udp::canonical(mapped),
            rtt: Instant::now().saturating_duration_since(sent),
        });
    }
}

/// Asks every STUN server of `map`, IPv4 and (when the OS has it) IPv6 at once, each family
/// from one fresh socket; the answers, IPv4 first.
pub async fn probe(map: &RelayMap, opts: &Options) -> Vec<Answer> {
    let deadline = Instant::now() + opts.timeout;
    let ipv6 = os_has_ipv6();
    let all = tokio::time::timeout_at(deadline, targets(map, ipv6))
        .await
        .unwrap_or_default();
    let (t4, t6): (Vec<_>, Vec<_>) = all.into_iter().partition(|(_, a)| a.is_ipv4());
    let v4 = async {
        match UdpSocket::bind("0.0.0.0:0").await {
            Ok(s) => probe_family(s, &t4, deadline).await,
            Err(e) => {
                log::debug!("netcheck: IPv4 socket: {e}");
                Vec::new()
            }
        }
    };
    let v6 = async {
        if t6.is_empty() {
            return Vec::new();
        }
        match UdpSocket::bind("[::]:0").await {
            Ok(s) => probe_family(s, &t6, deadline).await,
            Err(e) => {
                log::debug!("netcheck: IPv6 socket: {e}");
                Vec::new()
            }
        }
    };
    let (mut a4, a6) = tokio::join!(v4, v6);
    a4.extend(a6);
    a4
}

/// Runs a check of `map` (see the module documentation).
pub async fn run(map: &RelayMap, opts: &Options) -> Report {
    let answers = probe(map, opts).await;
    report(map, &answers, os_has_ipv6())
}

/// `tailgate netcheck` in the daemon: a check of the relay map of the node's relay
/// connections (`None`: there are none); the latencies measured also feed the home region
/// choice.
pub async fn for_node(relay: Option<Arc<RelayLinks>>) -> Result<Report, String> {
    let map = relay.as_ref().map(|r| r.map()).unwrap_or_default();
    let Some(relay) = relay.filter(|_| !map.regions.is_empty()) else {
        return Err(
            "no relay map: the node is not logged in to a control server with relays".into(),
        );
    };
    // The gateway's port-mapping protocols, probed while the STUN servers are.
    let opts = Options::default();
    let (mut report, portmap) = tokio::join!(
        run(&map, &opts),
        crate::portmap::probe(None, PORTMAP_TIMEOUT)
    );
    report.portmap = Some(portmap);
    if relay.map() == map {
        relay.set_latencies(report.latencies());
    }
    Ok(report)
}

/// The daemon's home region upkeep for `relay`, until it is dropped: measures the relay
/// regions' latencies at once when a relay map arrives or changes, every [`LATENCY_EVERY`],
/// and again when the home connection is lost, and lets [`RelayLinks`] choose the home region
/// from them (and fail over when the home connection stays down).
pub async fn keep_home(relay: Weak<RelayLinks>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<(Instant, RelayMap)> = None;
    let mut again = false;
    let mut running: Option<tokio::task::JoinHandle<(RelayMap, Vec<Answer>)>> = None;
    loop {
        tick.tick().await;
        let Some(links) = relay.upgrade() else {
            if let Some(t) = running {
                t.abort();
            }
            return;
        };
        again |= links.check_home(std::time::Instant::now());
        if let Some(t) = running.take_if(|t| t.is_finished()) {
            // Finished: the await returns at once.
            if let Ok((map, answers)) = t.await {
                if links.map() == map {
                    links.set_latencies(region_latencies(&answers));
                }
                last = Some((Instant::now(), map));
            }
        }
        if running.is_some() {
            continue;
        }
        let map = links.map();
        if map.regions.is_empty() {
            continue;
        }
        let due = again
            || last
                .as_ref()
                .is_none_or(|(at, m)| at.elapsed() >= LATENCY_EVERY || *m != map);
        if due {
            again = false;
            running = Some(tokio::spawn(async move {
                let answers = probe(&map, &Options::default()).await;
                (map, answers)
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::derp::map::{RelayNode, RelayRegion};
    use crate::stun::server::StunServer;

    fn answer(region: u32, server: &str, mapped: &str, rtt_ms: u64) -> Answer {
        Answer {
            region,
            server: server.parse().unwrap(),
            mapped: mapped.parse().unwrap(),
            rtt: Duration::from_millis(rtt_ms),
        }
    }

    fn region(id: u32, code: &str, name: &str, avoid: bool, nodes: Vec<RelayNode>) -> RelayRegion {
        RelayRegion {
            region_id: id,
            region_code: code.into(),
            region_name: name.into(),
            avoid,
            nodes,
        }
    }

    fn map_of(regions: Vec<RelayRegion>) -> RelayMap {
        RelayMap {
            regions: regions.into_iter().map(|r| (r.region_id, r)).collect(),
        }
    }

    #[test]
    fn mapping_varies_only_between_different_servers() {
        let a = answer(1, "192.0.2.1:3478", "203.0.113.4:41641", 5);
        assert_eq!(mapping_varies(&[a]), None);
        // Retransmitted answers of one server are one server.
        assert_eq!(mapping_varies(&[a, a]), None);
        let same = answer(2, "192.0.2.2:3478", "203.0.113.4:41641", 9);
        assert_eq!(mapping_varies(&[a, same]), Some(false));
        // Same address, another port: another server.
        let other_port = answer(1, "192.0.2.1:3479", "203.0.113.4:50000", 5);
        assert_eq!(mapping_varies(&[a, other_port]), Some(true));
        assert_eq!(mapping_varies(&[a, same, other_port]), Some(true));
    }

    #[test]
    fn reports_read_like_tailscale_netcheck() {
        let map = map_of(vec![
            region(900, "lab", "Lab", false, vec![]),
            region(901, "far", "", false, vec![]),
            region(902, "near", "Near but avoided", true, vec![]),
            region(903, "dead", "Dead", false, vec![]),
        ]);
        let answers = [
            answer(901, "192.0.2.9:3478", "203.0.113.4:41641", 30),
            answer(900, "192.0.2.1:3478", "203.0.113.4:41641", 12),
            answer(900, "192.0.2.2:3478", "203.0.113.4:41641", 4),
            answer(902, "192.0.2.3:3478", "203.0.113.4:41641", 1),
        ];
        let mut r = report(&map, &answers, true);
        assert_eq!(r.preferred_region, Some(900));
        assert_eq!(r.global_v4, Some("203.0.113.4:41641".parse().unwrap()));
        assert_eq!(r.mapping_varies_by_dest_ip, Some(false));
        assert_eq!(r.latencies()[&900], Duration::from_millis(4));
        assert_eq!(
            r.to_text(),
            "Report:\n\
             \t* UDP: true\n\
             \t* IPv4: yes, 203.0.113.4:41641\n\
             \t* IPv6: no, but OS has support\n\
             \t* MappingVariesByDestIP: false\n\
             \t* PortMapping: not checked\n\
             \t* Nearest relay: Lab (900)\n\
             \t* Relay latency:\n\
             \t\t- 902 near: 1.0ms (Near but avoided, avoid)\n\
             \t\t- 900 lab: 4.0ms (Lab)\n\
             \t\t- 901 far: 30.0ms (far)\n\
             \t\t- 903 dead: no answer (Dead)\n"
        );
        r.portmap = Some(PortMapProbe {
            upnp: true,
            pmp: false,
            pcp: true,
        });
        assert!(r.to_text().contains("\t* PortMapping: UPnP, PCP\n"));
        r.portmap = Some(PortMapProbe::default());
        assert!(r.to_text().contains("\t* PortMapping: none\n"));
        // JSON round trip.
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);

        let empty = report(&map, &[], false);
        let t = empty.to_text();
        assert!(t.contains("\t* UDP: false\n"), "{t}");
        assert!(t.contains("\t* IPv4: (no addr found)\n"), "{t}");
        assert!(t.contains("\t* IPv6: no, unavailable in OS\n"), "{t}");
        assert!(t.contains("MappingVariesByDestIP: unknown"), "{t}");
        assert!(t.contains("Nearest relay: none"), "{t}");
        // Only an avoided region answered: it is the nearest.
        let only_avoid = report(&map, &answers[3..], true);
        assert_eq!(only_avoid.preferred_region, Some(902));
    }

    fn stun_node(name: &str, region: u32, port: u16) -> RelayNode {
        RelayNode {
            name: name.into(),
            region_id: region,
            ipv4: Some(std::net::Ipv4Addr::LOCALHOST),
            stun_port: i32::from(port),
            ..RelayNode::default()
        }
    }

    #[tokio::test]
    async fn measures_every_region_and_ends_early_when_all_answered() {
        let s1 = StunServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let s2 = StunServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        // A socket that never answers, and a node without STUN.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let map = map_of(vec![
            region(
                1,
                "a",
                "A",
                false,
                vec![stun_node("a", 1, s1.local_addr().port())],
            ),
            region(
                2,
                "b",
                "B",
                false,
                vec![stun_node("b", 2, s2.local_addr().port())],
            ),
            region(
                3,
                "c",
                "C",
                false,
                vec![RelayNode {
                    stun_port: -1,
                    ..stun_node("c", 3, 1)
                }],
            ),
        ]);
        let started = Instant::now();
        let r = run(&map, &Options::default()).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert!(r.udp_v4);
        assert_eq!(
            r.global_v4.map(|a| a.ip()),
            Some("127.0.0.1".parse().unwrap())
        );
        // One socket, two servers, no NAT: the same mapping.
        assert_eq!(r.mapping_varies_by_dest_ip, Some(false));
        let lat = r.latencies();
        assert_eq!(lat.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        assert!(r.preferred_region == Some(1) || r.preferred_region == Some(2));

        // With a silent server the check takes the whole (bounded) time.
        let mut map2 = map.clone();
        map2.regions.get_mut(&3).unwrap().nodes[0] =
            stun_node("c", 3, silent.local_addr().unwrap().port());
        let started = Instant::now();
        let opts = Options {
            timeout: Duration::from_millis(600),
        };
        let r = run(&map2, &opts).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(550) && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert_eq!(r.latencies().len(), 2);
        assert_eq!(
            r.regions.last().map(|x| (x.region_id, x.latency_ms)),
            Some((3, None))
        );
        // The silent server got retransmissions (0, 100, 300 ms), each a new transaction.
        silent.set_nonblocking(true).unwrap();
        let mut n = 0;
        let mut buf = [0u8; 64];
        while silent.recv_from(&mut buf).is_ok() {
            n += 1;
        }
        assert!((3..=5).contains(&n), "{n} requests");
    }

    #[tokio::test]
    async fn the_daemon_needs_a_relay_map() {
        let e = for_node(None).await.unwrap_err();
        assert!(e.starts_with("no relay map"), "{e}");
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let links = RelayLinks::new(x25519_dalek::StaticSecret::from([1u8; 32]), tx);
        let e = for_node(Some(links)).await.unwrap_err();
        assert!(e.contains("not logged in"), "{e}");
    }
}
