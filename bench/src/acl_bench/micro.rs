//! In-process micro-benchmark of the packet filter (no root, no network): the bitmap
//! [`Classifier`] built from 10 to 10,000 generated [`FilterRule`]s, timed per
//! [`Classifier::accepts`] call for a packet only the last rule accepts and for one no rule
//! accepts, and [`PacketFilter::inbound`] (what the daemon runs per decrypted packet) for a
//! packet of a flow already accepted (held by the task's [`FlowCache`], or found in the shared
//! flow table) and for a packet it drops; plus the build time.
//!
//! The rules look like what the server compiles for a busy node: sources are tailnet node
//! addresses (IPv4 and IPv6), other sites' CIDRs and sometimes `*`; destinations are node
//! addresses and subnet routes, many of them containing the packet's destination; ports are
//! single ports, lists and ranges from a pool of common services; most rules cover the
//! default protocols, some only TCP, UDP or SCTP. The test packet's source appears in other
//! rules too, so no lookup is trivially empty.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tailgate::control::proto::{DstPorts, FilterRule};
use tailgate::filter::classifier::Classifier;
use tailgate::filter::packet::{self, PacketInfo};
use tailgate::filter::{FlowCache, PacketFilter, Verdict};

use crate::forward_bench::SplitMix64;

/// Rule counts of the full run.
pub const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];
/// The test packets' source (a tailnet client).
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
/// The test packets' destination (a host on a subnet route).
pub const SERVER: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
/// The port only the last rule accepts (TCP).
pub const ACCEPTED_PORT: u16 = 5301;
/// A port no rule accepts.
pub const REFUSED_PORT: u16 = 5302;
/// Source port of the test packets.
const SPORT: u16 = 40_000;
/// Seed of the rule generator.
const SEED: u64 = 0x05ee_dac1;
/// Port ranges of the generated rules (common services; none covers the test ports).
const PORTS: [(u16, u16); 31] = [
    (22, 22),
    (80, 80),
    (443, 443),
    (8080, 8080),
    (3306, 3306),
    (5432, 5432),
    (6379, 6379),
    (9090, 9100),
    (3000, 3000),
    (8000, 8999),
    (30000, 32767),
    (1024, 2047),
    (10000, 10100),
    (25, 25),
    (587, 587),
    (993, 993),
    (389, 389),
    (636, 636),
    (2049, 2049),
    (3389, 3389),
    (5900, 5910),
    (6443, 6443),
    (9200, 9300),
    (27017, 27017),
    (11211, 11211),
    (53, 53),
    (123, 123),
    (161, 162),
    (514, 514),
    (4789, 4789),
    (51820, 51820),
];
/// Tailnet nodes the generated sources and destinations pick from.
const NODES: u32 = 4_096;

/// How long to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MicroSettings {
    /// Timed batches per figure; the report gives their median.
    pub batches: usize,
    /// Length of one batch.
    pub batch_time: Duration,
    /// Classifier builds timed per size; the report gives their median.
    pub builds: usize,
}

impl MicroSettings {
    /// The full run: 5 batches of 100 ms per figure, 3 builds.
    pub fn full() -> MicroSettings {
        MicroSettings {
            batches: 5,
            batch_time: Duration::from_millis(100),
            builds: 3,
        }
    }

    /// `--quick`: 3 batches of 30 ms, 1 build.
    pub fn quick() -> MicroSettings {
        MicroSettings {
            batches: 3,
            batch_time: Duration::from_millis(30),
            builds: 1,
        }
    }

    /// The smoke test: 1 batch of 2 ms, 1 build.
    pub fn smoke() -> MicroSettings {
        MicroSettings {
            batches: 1,
            batch_time: Duration::from_millis(2),
            builds: 1,
        }
    }
}

/// The figures of one rule count.
#[derive(Clone, Debug, PartialEq)]
pub struct MicroRow {
    /// Rules.
    pub rules: usize,
    /// Classifier atoms (rule × destination entries).
    pub atoms: usize,
    /// Median time of [`Classifier::new`], ms.
    pub build_ms: f64,
    /// ns per `accepts()` of the packet only the last rule accepts.
    pub accepts_match_ns: f64,
    /// ns per `accepts()` of a packet no rule accepts.
    pub accepts_miss_ns: f64,
    /// ns per `PacketFilter::inbound` of a packet of an accepted flow that the calling
    /// task's [`FlowCache`] holds (a run of packets of one flow, as a transfer sends them).
    pub inbound_cached_ns: f64,
    /// ns per `PacketFilter::inbound` of a packet of an accepted flow looked up in the shared
    /// flow table (the task's cache holds another flow).
    pub inbound_table_ns: f64,
    /// ns per `PacketFilter::inbound` of a packet it drops (parse, flow miss, classifier).
    pub inbound_drop_ns: f64,
    /// What `accepts()` returned for the accepted packet (the last rule's index).
    pub matched_acl: Option<u32>,
    /// What `accepts()` returned for the refused packet (`None`).
    pub refused_acl: Option<u32>,
}

/// What the micro-benchmark measured.
#[derive(Clone, Debug, PartialEq)]
pub struct MicroReport {
    /// How long it measured.
    pub settings: MicroSettings,
    /// ns per [`packet::parse`] of the test packet (part of every `inbound`).
    pub parse_ns: f64,
    /// One row per rule count.
    pub rows: Vec<MicroRow>,
}

fn v4net(a: Ipv4Addr, len: u8) -> IpNet {
    IpNet::V4(Ipv4Net::new(a, len).expect("valid IPv4 prefix length")).trunc()
}

fn v6net(a: Ipv6Addr, len: u8) -> IpNet {
    IpNet::V6(Ipv6Net::new(a, len).expect("valid IPv6 prefix length")).trunc()
}

fn node_v4(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i)
}

fn node_v6(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, (i >> 16) as u16, i as u16)
}

fn source(rng: &mut SplitMix64) -> Vec<IpNet> {
    match rng.below(20) {
        // `*`.
        0 => vec![
            v4net(Ipv4Addr::UNSPECIFIED, 0),
            v6net(Ipv6Addr::UNSPECIFIED, 0),
        ],
        // The test client (with other rules' ports and destinations).
        1 => vec![v4net(CLIENT, 32)],
        // Another site.
        2..=4 => vec![v4net(Ipv4Addr::new(10, rng.below(256) as u8, 0, 0), 16)],
        // A node, both addresses.
        _ => {
            let i = 2 + rng.below(NODES - 2);
            vec![v4net(node_v4(i), 32), v6net(node_v6(i), 128)]
        }
    }
}

fn destination(rng: &mut SplitMix64) -> IpNet {
    match rng.below(10) {
        // The test packet's subnet, or one containing it.
        0 => v4net(Ipv4Addr::new(192, 168, 1, 0), 24),
        1 => v4net(Ipv4Addr::new(192, 168, 0, 0), 16),
        // Another subnet route.
        2..=3 => v4net(Ipv4Addr::new(192, 168, rng.below(256) as u8, 0), 24),
        4 => v4net(
            Ipv4Addr::new(10, rng.below(256) as u8, rng.below(256) as u8, 0),
            24,
        ),
        // A node.
        5 => v6net(node_v6(1 + rng.below(NODES - 1)), 128),
        _ => v4net(node_v4(1 + rng.below(NODES - 1)), 32),
    }
}

/// `n` generated rules (`acl` 0…n-1); the last one, alone, accepts TCP from [`CLIENT`] to
/// [`SERVER`]:[`ACCEPTED_PORT`].
pub fn rules(n: usize) -> Vec<FilterRule> {
    let mut rng = SplitMix64::new(SEED);
    let mut out: Vec<FilterRule> = (0..n.saturating_sub(1))
        .map(|i| {
            let mut src = source(&mut rng);
            if rng.below(4) == 0 {
                src.extend(source(&mut rng));
            }
            src.sort();
            src.dedup();
            let mut dst: Vec<DstPorts> = (0..1 + rng.below(3))
                .map(|_| {
                    let (first, last) = PORTS[rng.below(PORTS.len() as u32) as usize];
                    DstPorts {
                        net: destination(&mut rng),
                        first,
                        last,
                    }
                })
                .collect();
            dst.sort();
            dst.dedup();
            let protos = match rng.below(20) {
                0..=13 => Vec::new(),
                14..=16 => vec![6],
                17..=18 => vec![17],
                _ => vec![132],
            };
            FilterRule {
                acl: i as u32,
                src,
                dst,
                protos,
            }
        })
        .collect();
    if n > 0 {
        out.push(FilterRule {
            acl: (n - 1) as u32,
            src: vec![v4net(CLIENT, 32)],
            dst: vec![DstPorts {
                net: v4net(Ipv4Addr::new(192, 168, 1, 0), 24),
                first: ACCEPTED_PORT,
                last: ACCEPTED_PORT,
            }],
            protos: vec![6],
        });
    }
    out
}

/// An IPv4 TCP packet (SYN) from [`CLIENT`]:40000 to [`SERVER`]:`dport`.
pub fn tcp_packet(dport: u16) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&CLIENT.octets());
    p[16..20].copy_from_slice(&SERVER.octets());
    p[20..22].copy_from_slice(&SPORT.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[32] = 0x50;
    p[33] = 0x02;
    p
}

/// The addressing of [`tcp_packet`]`(dport)`.
pub fn tcp_info(dport: u16) -> PacketInfo {
    PacketInfo {
        proto: 6,
        src: IpAddr::V4(CLIENT),
        dst: IpAddr::V4(SERVER),
        sport: SPORT,
        dport,
        icmp: None,
        later_fragment: false,
    }
}

/// ns per call of `f`: batches of `settings.batch_time` (the count calibrated first), median.
fn time_per_call(settings: &MicroSettings, mut f: impl FnMut()) -> f64 {
    // Calibrate: how many calls fit in a fifth of a batch (bounded by time and count).
    let calib = settings.batch_time / 5;
    let start = Instant::now();
    let mut calls: u64 = 0;
    while start.elapsed() < calib && calls < 1 << 32 {
        for _ in 0..64 {
            f();
        }
        calls += 64;
    }
    let per_batch = (calls * 5).max(64);
    let mut samples: Vec<f64> = (0..settings.batches.max(1))
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            t.elapsed().as_nanos() as f64 / per_batch as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn median_ms(settings: &MicroSettings, rules: &[FilterRule]) -> (Classifier, f64) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..settings.builds.max(1) {
        let t = Instant::now();
        let c = Classifier::new(black_box(rules));
        times.push(t.elapsed().as_secs_f64() * 1e3);
        last = Some(c);
    }
    times.sort_by(f64::total_cmp);
    let c = last.unwrap_or_else(|| Classifier::new(rules));
    (c, times[times.len() / 2])
}

/// Measures one rule count.
pub fn measure_size(n: usize, settings: &MicroSettings) -> Result<MicroRow> {
    let rules = rules(n);
    let (classifier, build_ms) = median_ms(settings, &rules);
    let (hit, miss) = (tcp_info(ACCEPTED_PORT), tcp_info(REFUSED_PORT));
    let matched_acl = classifier.accepts(&hit);
    let refused_acl = classifier.accepts(&miss);
    if matched_acl != Some((n - 1) as u32) || refused_acl.is_some() {
        bail!(
            "{n} rules: the classifier answered {matched_acl:?} for the accepted packet \
             (want the last rule, {}) and {refused_acl:?} for the refused one (want none)",
            n - 1
        );
    }
    let accepts_match_ns = time_per_call(settings, || {
        black_box(classifier.accepts(black_box(&hit)));
    });
    let accepts_miss_ns = time_per_call(settings, || {
        black_box(classifier.accepts(black_box(&miss)));
    });

    let filter = PacketFilter::default();
    filter.set_rules(Some(&rules));
    let Some(snapshot) = filter.snapshot() else {
        bail!("the packet filter holds no rules after set_rules");
    };
    let (hit_pkt, miss_pkt) = (tcp_packet(ACCEPTED_PORT), tcp_packet(REFUSED_PORT));
    // The daemon reads the clock once per batch of datagrams; a figure lasts well under
    // `FlowCache::REFRESH`, so one reading per figure is what a busy task sees.
    let mut cache = FlowCache::default();
    let now = Instant::now();
    if filter.inbound(&snapshot, &hit_pkt, &mut cache, now) != Verdict::Accept
        || filter.inbound(&snapshot, &miss_pkt, &mut cache, now) != Verdict::DropNoRule
    {
        bail!("{n} rules: PacketFilter::inbound does not accept/drop the test packets");
    }
    let now = Instant::now();
    let inbound_cached_ns = time_per_call(settings, || {
        black_box(filter.inbound(&snapshot, black_box(&hit_pkt), &mut cache, now));
    });
    let now = Instant::now();
    let inbound_table_ns = time_per_call(settings, || {
        let mut fresh = FlowCache::default();
        black_box(filter.inbound(&snapshot, black_box(&hit_pkt), &mut fresh, now));
    });
    let now = Instant::now();
    let inbound_drop_ns = time_per_call(settings, || {
        black_box(filter.inbound(&snapshot, black_box(&miss_pkt), &mut cache, now));
    });
    Ok(MicroRow {
        rules: n,
        atoms: classifier.atoms(),
        build_ms,
        accepts_match_ns,
        accepts_miss_ns,
        inbound_cached_ns,
        inbound_table_ns,
        inbound_drop_ns,
        matched_acl,
        refused_acl,
    })
}

/// Measures every size in `sizes` (each ≥ 1), printing a line per size.
pub fn measure(sizes: &[usize], settings: &MicroSettings) -> Result<MicroReport> {
    let pkt = tcp_packet(ACCEPTED_PORT);
    let parse_ns = time_per_call(settings, || {
        black_box(packet::parse(black_box(&pkt)).ok());
    });
    let mut rows = Vec::new();
    for &n in sizes {
        if n == 0 {
            bail!("the micro-benchmark needs at least one rule");
        }
        let row = measure_size(n, settings)?;
        println!(
            "   {:>6} rules, {:>6} atoms: build {:.2} ms; accepts() {:.0} ns (match) / {:.0} ns \
             (no match); inbound {:.0} ns (task's flow cache) / {:.0} ns (flow table) / {:.0} \
             ns (dropped)",
            row.rules,
            row.atoms,
            row.build_ms,
            row.accepts_match_ns,
            row.accepts_miss_ns,
            row.inbound_cached_ns,
            row.inbound_table_ns,
            row.inbound_drop_ns
        );
        rows.push(row);
    }
    Ok(MicroReport {
        settings: *settings,
        parse_ns,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_rules_and_packets() {
        let r = rules(100);
        assert_eq!(r.len(), 100);
        assert!(r.iter().enumerate().all(|(i, x)| x.acl as usize == i));
        assert_eq!(r, rules(100), "deterministic");
        assert!(r[..99].iter().all(|x| x
            .dst
            .iter()
            .all(|d| !(d.first..=d.last).contains(&ACCEPTED_PORT))));
        assert_eq!(packet::parse(&tcp_packet(80)).unwrap(), tcp_info(80));
    }
}
