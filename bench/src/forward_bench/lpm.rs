//! Longest-prefix match at full-table scale: the userspace [`PrefixTable`] and the BPF LPM
//! trie `tun_forward` looks destinations up in, filled with the same random IPv4 prefixes.
//!
//! The prefixes come from a fixed-seed generator ([`SplitMix64`]): lengths uniform in
//! 8..=32, distinct, none inside `10.0.0.0/8` (kept for the lab's LAN `10.1.1.0/24`, which is
//! added as one more route, and for an address no route matches).
//!
//! * Userspace: time to insert every prefix, random-address lookups per second, and updates
//!   (remove + insert of existing prefixes) on the full table.
//! * BPF: the programs are loaded (not attached) in a lab namespace with a TUN device and a
//!   LAN veth whose host has a permanent neighbour entry, with room for all the routes
//!   (`max_routes`); [`XdpForward::add_route`] inserts them one by one (a `bpf` syscall each).
//!   The per-packet cost of `tun_forward` comes from `BPF_PROG_TEST_RUN`, first with 10 routes
//!   in the trie and again with all of them, for three packets: one whose destination matches
//!   the LAN route (parse, LPM hit, connection lookup, FIB lookup, rewrite: `XDP_REDIRECT`;
//!   timed as single runs, since the program rewrites the packet and repetitions would run on
//!   the rewritten buffer), the same with TTL 1 (parse and LPM hit, then passed untouched for
//!   the kernel to answer: the lookup's cost without the rest), and one whose destination
//!   matches nothing (parse and LPM miss: `XDP_PASS`). The last two are left unmodified, so
//!   the kernel's average over many repetitions times them.

use std::collections::HashSet;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ipnet::{IpNet, Ipv4Net};
use tailgate::route::PrefixTable;
use tailgate::xdp::{
    xdp_action, ForwardOptions, ForwardProgram, ForwardRoute, LanInterface, TunForwardCounters,
    XdpForward,
};

use super::stage::{
    ifindex, join_bounded, tun_setup, udp4, StageLab, CLIENT4, HOST, ROUTER_LAN, TUN_NAME,
};
use super::{one_line, Durations, SplitMix64};

/// Seed of the prefix and address generator.
pub const SEED: u64 = 0x7a11_6a7e;
/// The route the lab's LAN host is behind.
pub const LAN_ROUTE: &str = "10.1.1.0/24";
/// A destination no route matches.
pub const MISS_ADDR: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// Routes in the small trie the full one is compared with (the LAN route and 9 random ones).
pub const SMALL_ROUTES: usize = 10;
/// `BPF_PROG_TEST_RUN` timings per figure; the report gives their median.
const TIMINGS: usize = 5;
/// The smallest `max_routes` tried when the map cannot be created as large as asked.
const MIN_MAX_ROUTES: u32 = 65_536;
/// How long the BPF part may take in total.
const BPF_TIMEOUT: Duration = Duration::from_secs(600);

/// `n` distinct random IPv4 prefixes (lengths 8..=32, none inside 10.0.0.0/8), always the
/// same for the same `n` and `seed`. Fewer only if the generator keeps repeating itself
/// (bounded attempts).
pub fn random_prefixes(n: usize, seed: u64) -> Vec<Ipv4Net> {
    let mut rng = SplitMix64::new(seed);
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    let max_attempts = n.saturating_mul(4).max(1000);
    for _ in 0..max_attempts {
        if out.len() >= n {
            break;
        }
        let len = 8 + rng.below(25) as u8;
        let bits = rng.next_u32();
        let mask = u32::MAX << (32 - u32::from(len));
        let network = bits & mask;
        if network >> 24 == 10 {
            continue;
        }
        if seen.insert((network, len)) {
            if let Ok(net) = Ipv4Net::new(Ipv4Addr::from(network), len) {
                out.push(net);
            }
        }
    }
    out
}

/// The userspace table's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct UserspaceLpm {
    /// Prefixes in the table (the random ones and the LAN route).
    pub prefixes: usize,
    /// Time to insert all of them into an empty table.
    pub insert: Duration,
    /// Random-address lookups timed.
    pub lookups: usize,
    /// Time of all lookups.
    pub lookup: Duration,
    /// Lookups that found a prefix.
    pub matched: usize,
    /// Prefixes removed and inserted again on the full table.
    pub updates: usize,
    /// Time of all updates.
    pub update: Duration,
}

/// The kernel's average time of one `tun_forward` run on one packet.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    /// Average ns per run, one value per batch.
    pub runs: Vec<f64>,
    /// The program's verdict (`XDP_REDIRECT` = 4, `XDP_PASS` = 2).
    pub action: u32,
    /// The `tun_forward` counter that grew most during the timing (what the program did).
    pub counter: &'static str,
}

impl Timing {
    /// Median ns per packet.
    pub fn ns(&self) -> Option<f64> {
        crate::tunnel_bench::median(&self.runs)
    }

    /// The verdict's name.
    pub fn action_name(&self) -> &'static str {
        action_name(self.action)
    }
}

/// Name of an XDP verdict.
pub fn action_name(action: u32) -> &'static str {
    match action {
        xdp_action::ABORTED => "XDP_ABORTED",
        xdp_action::DROP => "XDP_DROP",
        xdp_action::PASS => "XDP_PASS",
        xdp_action::TX => "XDP_TX",
        xdp_action::REDIRECT => "XDP_REDIRECT",
        _ => "unknown",
    }
}

/// The BPF trie's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct BpfLpm {
    /// Size the trie was created with.
    pub max_routes: u32,
    /// Random prefixes asked for.
    pub requested: usize,
    /// Routes in the trie at the end (the LAN route included).
    pub routes: usize,
    /// Routes inserted in the timed bulk insert.
    pub inserted: usize,
    /// Time of the bulk insert.
    pub insert: Duration,
    /// Why the bulk insert stopped early, if it did.
    pub insert_error: Option<String>,
    /// Routes removed and inserted again on the full trie.
    pub updates: usize,
    /// Time of all updates.
    pub update: Duration,
    /// Why the updates stopped early, if they did.
    pub update_error: Option<String>,
    /// Matching destination, forwarded (single runs), [`SMALL_ROUTES`] routes in the trie.
    pub hit_small: Timing,
    /// Matching destination, forwarded (single runs), every route in the trie.
    pub hit_full: Timing,
    /// Matching destination with TTL 1 (LPM hit, then passed untouched), [`SMALL_ROUTES`]
    /// routes in the trie.
    pub lookup_small: Timing,
    /// Matching destination with TTL 1, every route in the trie.
    pub lookup_full: Timing,
    /// Unmatched destination, [`SMALL_ROUTES`] routes in the trie.
    pub miss_small: Timing,
    /// Unmatched destination, every route in the trie.
    pub miss_full: Timing,
    /// `BPF_PROG_TEST_RUN` repetitions per timing of the unmodified packets.
    pub repeat: u32,
    /// Single `BPF_PROG_TEST_RUN` calls per batch of the forwarded packet.
    pub single_runs: u32,
    /// Remarks (a smaller trie than asked for, and why).
    pub notes: Vec<String>,
}

/// Both tables.
#[derive(Clone, Debug)]
pub struct LpmReport {
    /// Random prefixes asked for.
    pub requested: usize,
    /// Random prefixes generated (equal to `requested` unless the generator ran dry).
    pub generated: usize,
    /// The userspace table, or why it could not be measured.
    pub userspace: Result<UserspaceLpm, String>,
    /// The BPF trie, or why it could not be measured.
    pub bpf: Result<BpfLpm, String>,
}

/// Measures both tables with `d.prefixes` random prefixes.
pub fn measure(d: &Durations) -> LpmReport {
    let started = Instant::now();
    let prefixes = random_prefixes(d.prefixes, SEED);
    println!(
        "   {} distinct random prefixes generated in {:.1} s",
        prefixes.len(),
        started.elapsed().as_secs_f64()
    );
    let userspace = userspace(&prefixes, d).map_err(|e| format!("{e:#}"));
    match &userspace {
        Ok(u) => println!(
            "   userspace PrefixTable: {} prefixes inserted in {:.2} s, {:.2} M lookups/s, \
             {:.0} k updates/s",
            u.prefixes,
            u.insert.as_secs_f64(),
            per_sec(u.lookups, u.lookup) / 1e6,
            per_sec(u.updates, u.update) / 1e3
        ),
        Err(e) => println!("   userspace PrefixTable failed: {}", one_line(e, 300)),
    }
    let generated = prefixes.len();
    let bpf = if super::interrupted() {
        Err("interrupted".to_string())
    } else {
        bpf(prefixes, d).map_err(|e| format!("{e:#}"))
    };
    match &bpf {
        Ok(b) => {
            println!(
                "   BPF LPM trie (max_routes {}): {} routes inserted in {:.2} s{}, {:.0} k \
                 updates/s",
                b.max_routes,
                b.inserted,
                b.insert.as_secs_f64(),
                b.insert_error
                    .as_ref()
                    .map(|e| format!(" (stopped: {})", one_line(e, 200)))
                    .unwrap_or_default(),
                per_sec(b.updates, b.update) / 1e3
            );
            println!(
                "   tun_forward ns/packet with {} → {} routes: forwarded {} → {} ({}, {}), \
                 LPM hit + TTL 1 {} → {} ({}), no route {} → {} ({})",
                SMALL_ROUTES,
                b.routes,
                fmt_ns(b.hit_small.ns()),
                fmt_ns(b.hit_full.ns()),
                b.hit_full.action_name(),
                b.hit_full.counter,
                fmt_ns(b.lookup_small.ns()),
                fmt_ns(b.lookup_full.ns()),
                b.lookup_full.counter,
                fmt_ns(b.miss_small.ns()),
                fmt_ns(b.miss_full.ns()),
                b.miss_full.counter,
            );
        }
        Err(e) => println!("   BPF LPM trie failed: {}", one_line(e, 300)),
    }
    LpmReport {
        requested: d.prefixes,
        generated,
        userspace,
        bpf,
    }
}

fn fmt_ns(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |n| format!("{n:.0}"))
}

/// `count / elapsed` (0 for no time).
pub fn per_sec(count: usize, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 {
        count as f64 / s
    } else {
        0.0
    }
}

fn lan_route() -> Result<Ipv4Net> {
    LAN_ROUTE.parse().context("the LAN route")
}

fn userspace(prefixes: &[Ipv4Net], d: &Durations) -> Result<UserspaceLpm> {
    let mut table: PrefixTable<u32> = PrefixTable::new();
    let lan = lan_route()?;
    let start = Instant::now();
    table.insert(IpNet::V4(lan), 0);
    for (i, p) in prefixes.iter().enumerate() {
        table.insert(IpNet::V4(*p), i as u32 + 1);
    }
    let insert = start.elapsed();
    if table.len() != prefixes.len() + 1 {
        bail!(
            "the table holds {} prefixes after inserting {}",
            table.len(),
            prefixes.len() + 1
        );
    }
    if table.lookup(IpAddr::V4(HOST)) != Some(&0) {
        bail!("{HOST} does not resolve to {LAN_ROUTE}");
    }
    if table.lookup(IpAddr::V4(MISS_ADDR)).is_some() {
        bail!("{MISS_ADDR} matches a prefix");
    }
    let mut rng = SplitMix64::new(SEED ^ 0x5eed);
    let addrs: Vec<IpAddr> = (0..d.lookups)
        .map(|_| IpAddr::V4(Ipv4Addr::from(rng.next_u32())))
        .collect();
    let start = Instant::now();
    let mut matched = 0usize;
    for a in &addrs {
        if black_box(table.lookup(black_box(*a))).is_some() {
            matched += 1;
        }
    }
    let lookup = start.elapsed();
    let updates = d.updates.min(prefixes.len());
    let start = Instant::now();
    for (i, p) in prefixes[..updates].iter().enumerate() {
        let net = IpNet::V4(*p);
        if table.remove(&net).is_none() {
            bail!("{net} was not in the table");
        }
        table.insert(net, i as u32 + 1);
    }
    let update = start.elapsed();
    Ok(UserspaceLpm {
        prefixes: table.len(),
        insert,
        lookups: addrs.len(),
        lookup,
        matched,
        updates,
        update,
    })
}

fn bpf(prefixes: Vec<Ipv4Net>, d: &Durations) -> Result<BpfLpm> {
    let lab = StageLab::new()?;
    let mac = lab.host_mac()?;
    lab.router.ip(&[
        "neigh",
        "replace",
        &HOST.to_string(),
        "lladdr",
        &mac,
        "dev",
        "lan0",
        "nud",
        "permanent",
    ])?;
    let d = d.clone();
    let handle = lab.router.spawn_inside(move || bpf_inside(&prefixes, &d))?;
    join_bounded(handle, BPF_TIMEOUT)
}

/// Loads the programs with room for `wanted` routes, halving the size (down to
/// [`MIN_MAX_ROUTES`]) while the kernel refuses.
fn load(wanted: u32, notes: &mut Vec<String>) -> Result<XdpForward> {
    let mut max = wanted;
    loop {
        let opts = ForwardOptions {
            lan: vec![LanInterface::new("lan0", ROUTER_LAN)],
            tun_mtu: Some(1280),
            seed: Some(1),
            max_routes: max,
            ..ForwardOptions::default()
        };
        match XdpForward::load(&opts) {
            Ok(f) => return Ok(f),
            Err(e) if max / 2 >= MIN_MAX_ROUTES => {
                notes.push(format!(
                    "loading with max_routes = {max} failed ({}); trying {}",
                    one_line(&e.to_string(), 200),
                    max / 2
                ));
                max /= 2;
            }
            Err(e) => {
                return Err(anyhow!(e))
                    .context(format!("loading the XDP programs with max_routes = {max}"))
            }
        }
    }
}

/// The `tun_forward` counter that grew most between two readings.
fn grown(before: &TunForwardCounters, after: &TunForwardCounters) -> &'static str {
    after
        .delta(before)
        .iter()
        .max_by_key(|&(_, v)| v)
        .filter(|&(_, v)| v > 0)
        .map_or("none", |(name, _)| name)
}

/// [`TIMINGS`] calls of `BPF_PROG_TEST_RUN` with `repeat` repetitions each (the kernel's
/// average per repetition), for packets the program leaves unmodified: repetitions run on the
/// same buffer.
fn time_repeated(fwd: &XdpForward, pkt: &[u8], ifindex: u32, repeat: u32) -> Result<Timing> {
    let before = fwd.counters()?.tun;
    let mut runs = Vec::with_capacity(TIMINGS);
    let mut action = u32::MAX;
    for _ in 0..TIMINGS {
        let r = fwd
            .test_run_repeat(ForwardProgram::TunForward, pkt, ifindex, repeat)
            .context("BPF_PROG_TEST_RUN of tun_forward")?;
        runs.push(f64::from(r.duration_ns));
        action = r.action;
    }
    let counter = grown(&before, &fwd.counters()?.tun);
    Ok(Timing {
        runs,
        action,
        counter,
    })
}

/// [`TIMINGS`] batches of `calls` single runs, each on a fresh copy of `pkt` (for packets the
/// program rewrites); a batch's value is the mean of the kernel's per-run times, which include
/// the kernel's clock reads around the run.
fn time_single(fwd: &XdpForward, pkt: &[u8], ifindex: u32, calls: u32) -> Result<Timing> {
    // The first run creates the connection entry; time the steady state.
    fwd.test_run(ForwardProgram::TunForward, pkt, ifindex)
        .context("BPF_PROG_TEST_RUN of tun_forward")?;
    let before = fwd.counters()?.tun;
    let mut runs = Vec::with_capacity(TIMINGS);
    let mut action = u32::MAX;
    for _ in 0..TIMINGS {
        let mut total = 0u64;
        for _ in 0..calls.max(1) {
            let r = fwd
                .test_run(ForwardProgram::TunForward, pkt, ifindex)
                .context("BPF_PROG_TEST_RUN of tun_forward")?;
            total += u64::from(r.duration_ns);
            action = r.action;
        }
        runs.push(total as f64 / f64::from(calls.max(1)));
    }
    let counter = grown(&before, &fwd.counters()?.tun);
    Ok(Timing {
        runs,
        action,
        counter,
    })
}

/// `pkt` (IPv4) with another TTL and a corrected header checksum.
fn with_ttl(pkt: &[u8], ttl: u8) -> Vec<u8> {
    let mut p = pkt.to_vec();
    if p.len() >= 20 {
        p[8] = ttl;
        p[10..12].copy_from_slice(&[0, 0]);
        let c = tailgate::nat::checksum::checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// The BPF part, on a thread inside the lab's router namespace.
fn bpf_inside(prefixes: &[Ipv4Net], d: &Durations) -> Result<BpfLpm> {
    let _tun = tun_setup()?;
    let tun_if = ifindex(TUN_NAME)?;
    let mut notes = Vec::new();
    let wanted = u32::try_from(prefixes.len() + prefixes.len() / 10 + 2 * SMALL_ROUTES)
        .map_err(|_| anyhow!("{} prefixes do not fit a BPF map", prefixes.len()))?;
    let mut fwd = load(wanted, &mut notes)?;
    let max_routes = fwd.options().max_routes;
    if max_routes < wanted {
        notes.push(format!(
            "the trie was created with max_routes = {max_routes} instead of {wanted}"
        ));
    }
    let hit = udp4(CLIENT4, HOST, 61_000, 9, &[0u8; 18]);
    let lookup = with_ttl(&hit, 1);
    let miss = udp4(CLIENT4, MISS_ADDR, 61_000, 9, &[0u8; 18]);
    let small = SMALL_ROUTES - 1;
    let (first, rest) = prefixes.split_at(small.min(prefixes.len()));
    fwd.add_route(ForwardRoute::from(IpNet::V4(lan_route()?)))
        .context("adding the LAN route")?;
    for p in first {
        fwd.add_route(ForwardRoute::from(IpNet::V4(*p)))
            .with_context(|| format!("adding {p}"))?;
    }
    let repeat = d.test_run_repeat.max(1);
    let single_runs = (repeat / 20).clamp(100, 50_000);
    let hit_small = time_single(&fwd, &hit, tun_if, single_runs)?;
    let lookup_small = time_repeated(&fwd, &lookup, tun_if, repeat)?;
    let miss_small = time_repeated(&fwd, &miss, tun_if, repeat)?;

    let start = Instant::now();
    let mut inserted = 0;
    let mut insert_error = None;
    for p in rest {
        if let Err(e) = fwd.add_route(ForwardRoute::from(IpNet::V4(*p))) {
            insert_error = Some(format!(
                "route {} of {} ({p}): {}",
                inserted + small + 2,
                prefixes.len() + 1,
                one_line(&format!("{e:#}"), 300)
            ));
            break;
        }
        inserted += 1;
    }
    let insert = start.elapsed();
    let routes = fwd.routes().len();

    let hit_full = time_single(&fwd, &hit, tun_if, single_runs)?;
    let lookup_full = time_repeated(&fwd, &lookup, tun_if, repeat)?;
    let miss_full = time_repeated(&fwd, &miss, tun_if, repeat)?;

    let updates_wanted = d.updates.min(rest.len()).min(inserted);
    let start = Instant::now();
    let mut updates = 0;
    let mut update_error = None;
    for p in &rest[..updates_wanted] {
        let net = IpNet::V4(*p);
        let r = fwd
            .remove_route(net)
            .and_then(|()| fwd.add_route(ForwardRoute::from(net)));
        if let Err(e) = r {
            update_error = Some(format!("{net}: {}", one_line(&format!("{e:#}"), 300)));
            break;
        }
        updates += 1;
    }
    let update = start.elapsed();
    Ok(BpfLpm {
        max_routes,
        requested: prefixes.len(),
        routes,
        inserted,
        insert,
        insert_error,
        updates,
        update,
        update_error,
        hit_small,
        hit_full,
        lookup_small,
        lookup_full,
        miss_small,
        miss_full,
        repeat,
        single_runs,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_distinct_deterministic_and_outside_10_8() {
        let a = random_prefixes(5000, SEED);
        assert_eq!(a, random_prefixes(5000, SEED));
        assert_eq!(a.len(), 5000);
        let set: HashSet<_> = a.iter().collect();
        assert_eq!(set.len(), a.len());
        let ten: Ipv4Net = "10.0.0.0/8".parse().unwrap();
        for p in &a {
            assert!((8..=32).contains(&p.prefix_len()), "{p}");
            assert_eq!(p.trunc(), *p, "{p} has host bits");
            assert!(!ten.contains(p) && !p.contains(&ten), "{p}");
        }
    }

    #[test]
    fn userspace_table_small() {
        let p = random_prefixes(2000, 3);
        let d = Durations {
            lookups: 1000,
            updates: 100,
            ..Durations::smoke()
        };
        let u = userspace(&p, &d).unwrap();
        assert_eq!(u.prefixes, 2001);
        assert_eq!(u.lookups, 1000);
        assert_eq!(u.updates, 100);
    }

    #[test]
    fn rates() {
        assert_eq!(per_sec(10, Duration::from_secs(2)), 5.0);
        assert_eq!(per_sec(10, Duration::ZERO), 0.0);
        assert_eq!(action_name(4), "XDP_REDIRECT");
    }
}
