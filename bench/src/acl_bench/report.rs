//! The Markdown report of the access-control benchmark.

use std::fmt::Write as _;

use super::end_to_end::{SWITCH_SETTLE, TESTS, UDP_PAYLOAD};
use super::micro::{ACCEPTED_PORT, CLIENT, REFUSED_PORT, SERVER};
use super::policy::{
    PolicyKind, BENCH_USER, ELSEWHERE_EVERY, IPERF_PORTS, LAN_HOST, LAN_ROUTE, ROUTER_TAG,
};
use super::{Mode, Report, RunRecord, GOAL_COST};
use crate::forward_bench::report::grouped;
use crate::forward_bench::E2eTest;
use crate::tunnel_bench::one_line;

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

/// A test's value in its report unit (kpps for UDP, Gbit/s for TCP).
fn scaled(test: E2eTest, v: Option<f64>) -> String {
    if test.is_udp() {
        fmt(v.map(|v| v / 1e3), 0)
    } else {
        fmt(v, 2)
    }
}

fn unit(test: E2eTest) -> &'static str {
    if test.is_udp() {
        "kpps received"
    } else {
        "Gbit/s"
    }
}

/// Whether the goal applies to `test` (the traffic towards the LAN).
pub fn has_goal(test: E2eTest) -> bool {
    matches!(test, E2eTest::UdpFwd | E2eTest::TcpFwd)
}

/// The goal verdict over the tests it applies to: `Some(true)` met, `Some(false)` missed,
/// `None` a figure is missing.
pub fn goal_met(r: &Report) -> Option<bool> {
    let mut met = true;
    for test in TESTS.into_iter().filter(|t| has_goal(*t)) {
        let cost = 1.0 - r.e2e.ratio(test)?;
        met &= cost <= GOAL_COST;
    }
    Some(met)
}

/// The report.
pub fn render_markdown(r: &Report) -> String {
    let mut s = String::new();
    let d = &r.settings.e2e;
    let _ = writeln!(s, "# Access-control benchmark: 1,000-rule policy vs none\n");
    let _ = writeln!(
        s,
        "Written by `cargo xtask bench acl{}`. One lab, the control server's policy switched \
         between no `acls` and 1,000 `acls` entries within the run; each end-to-end figure is \
         the median of {} run(s) of {} s per policy. The whole run took {:.0} s. Figures are \
         as measured on a shared machine.\n",
        if r.settings.mode == Mode::Quick {
            " --quick"
        } else {
            ""
        },
        d.repeats,
        d.iperf_seconds,
        r.elapsed.as_secs_f64()
    );
    s.push_str(&r.machine.markdown(&[("iperf3", &r.machine.iperf3)]));
    summary(&mut s, r);
    end_to_end(&mut s, r);
    classifier(&mut s, r);
    notes(&mut s, r);
    s
}

fn summary(s: &mut String, r: &Report) {
    let e = &r.e2e;
    let goal = (GOAL_COST * 100.0).round();
    let _ = writeln!(s, "\n## Summary\n");
    let _ = writeln!(
        s,
        "Forwarding through a subnet router on its XDP fast path, with the 1,000-rule policy \
         and without a policy, both measured in this run on the same lab. Goal: the policy \
         costs at most {goal:.0} % of the throughput (cost = 1 − with / without) towards the \
         LAN, for the UDP packet rate and for TCP.\n"
    );
    let _ = writeln!(
        s,
        "| figure | no policy | 1,000-rule policy | with / without | cost | cost ≤ {goal:.0} % |\n\
         |---|---:|---:|---:|---:|---|"
    );
    for test in TESTS {
        let (a, b) = (
            e.median(PolicyKind::NoAcls, test),
            e.median(PolicyKind::Acl1000, test),
        );
        let q = e.ratio(test);
        let verdict = match (has_goal(test), q) {
            (false, _) => "(no goal)",
            (true, Some(q)) if 1.0 - q <= GOAL_COST => "yes",
            (true, Some(_)) => "no",
            (true, None) => "–",
        };
        let _ = writeln!(
            s,
            "| {}, {} | {} | {} | {} | {} | {verdict} |",
            test.name(),
            unit(test),
            scaled(test, a),
            scaled(test, b),
            q.map_or("–".into(), |q| format!("{q:.3}×")),
            q.map_or("–".into(), |q| format!("{:+.1} %", (1.0 - q) * 100.0)),
        );
    }
    let filter = |p: PolicyKind| {
        e.router_filter(p).map_or("–".into(), |f| {
            if f.enabled {
                format!("{} rules, {} atoms", grouped(f.rules), grouped(f.atoms))
            } else {
                "off".into()
            }
        })
    };
    let _ = writeln!(
        s,
        "| router's packet filter (`tailgate status --json`: `filter.rules`, `filter.atoms`) | \
         {} | {} | | | |",
        filter(PolicyKind::NoAcls),
        filter(PolicyKind::Acl1000)
    );
    let verdict = match goal_met(r) {
        Some(true) => format!(
            "**Goal met**: the 1,000-rule policy costs at most {goal:.0} % of the UDP packet \
             rate and of the TCP throughput towards the LAN in this run."
        ),
        Some(false) => format!(
            "**Goal not met** in this run: the cost exceeds {goal:.0} % for at least one of \
             the UDP packet rate and the TCP throughput towards the LAN (see the runs below \
             for the spread between repetitions)."
        ),
        None => "**Goal not checked**: a figure is missing (see the notes).".into(),
    };
    let _ = writeln!(s, "\n{verdict}");
    let per_packet = e
        .median(PolicyKind::NoAcls, E2eTest::UdpFwd)
        .filter(|v| *v > 0.0)
        .map(|pps| {
            format!(
                " (without a policy this run forwarded one 64-byte packet every {:.1} µs)",
                1e6 / pps
            )
        })
        .unwrap_or_default();
    let cached = r
        .micro
        .as_ref()
        .ok()
        .and_then(|m| m.rows.iter().find(|x| x.rules == 1_000))
        .map(|x| {
            format!(
                " ({:.0} ns, or {:.0} ns through the shared flow table, with 1,000 rules in \
                 section 2)",
                x.inbound_cached_ns, x.inbound_table_ns
            )
        })
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "\nA negative cost means the run with the policy was faster: the difference is then \
         within the run-to-run spread of the shared machine. The filter runs in the router's \
         daemon right after decryption; once a flow is accepted its later packets cost a \
         header parse and a check of the receiving task's flow cache{cached}, whatever the \
         number of rules, against the tunnel's and the forwarding's cost per \
         packet{per_packet}."
    );
}

fn end_to_end(s: &mut String, r: &Report) {
    let e = &r.e2e;
    let d = &r.settings.e2e;
    let _ = writeln!(s, "\n## 1. End to end through the router\n");
    let _ = writeln!(
        s,
        "One lab of network namespaces: a `tailgate control serve` server, a client node \
         (registered with an auth key of the user `{BENCH_USER}`, `--accept-routes`) and a \
         subnet router (an auth key tagged `{ROUTER_TAG}`, `--advertise-routes {LAN_ROUTE}`, \
         approved by the policy's `autoApprovers`, SNAT on) with a LAN host `{LAN_HOST}` \
         behind its `lan0` veth. Both daemons run as by default, so the router forwards the \
         LAN traffic on its XDP fast path (`tun_forward` on its TUN, `lan_return` on `lan0`). \
         Nothing is rebuilt between the policies: each repetition runs every test twice, \
         back to back, first without `acls` and then with the 1,000 entries, switching with \
         `tailgate control policy set` before each run. After each switch the benchmark waits \
         until the router's `tailgate status --json` shows the expected filter (off; or on, \
         with the expected rule count and the allowing rule) and the LAN host answers a ping, \
         then {} ms more.\n",
        SWITCH_SETTLE.as_millis()
    );
    let _ = writeln!(
        s,
        "- **No policy**: `groups`, `tagOwners`, `hosts` and `autoApprovers`, no `acls` key: \
         every node's filter is off and every packet passes without a look.\n\
         - **1,000-rule policy**: the same sections plus {} `acls` entries, generated with a \
         fixed seed. The first {} are a realistic mix — sources that are users, groups, tags, \
         `autogroup:member`, host aliases of other sites, CIDRs and tailnet addresses; \
         destinations that are the router's tag, its LAN, parts of it (`/28`, `/25`, single \
         hosts through `hosts` aliases) and, for every {ELSEWHERE_EVERY}th entry, destinations \
         elsewhere (other tags, sites, users); single ports, port lists and ranges of common \
         services; no protocol, `tcp`, `udp`, `sctp` or `icmp` — none of which accepts the \
         benchmark's traffic (TCP and UDP to ports {}–{}; the client's user appears in many \
         of them, with other ports). The last entry, `{{\"src\": [\"{BENCH_USER}\"], \"dst\": \
         [\"{LAN_ROUTE}:*\"]}}`, accepts it. Each node receives only the rules for traffic to \
         it: the router's filter holds the {} entries that name what it serves and have a \
         source, the client's none (its filter is on and lets in only replies to its own \
         flows).",
        e.acl_entries,
        e.acl_entries.saturating_sub(1),
        IPERF_PORTS.start(),
        IPERF_PORTS.end(),
        e.expected_router_rules
    );
    let _ = writeln!(
        s,
        "- Tests, from the client's namespace to an iperf3 server on the LAN host: \
         `iperf3 {} -t {}` (UDP, {UDP_PAYLOAD}-byte payloads, far more offered than the \
         tunnel carries; datagrams per second the server received), `iperf3 -t {}` (TCP, one \
         stream, client → LAN host) and `iperf3 {} -t {}` (TCP, LAN host → client).\n\
         - Around every run the router's `routing.fast_path.counters` and `filter` counters \
         are read from its `tailgate status --json`.\n",
        E2eTest::UdpFwd.iperf_args().join(" "),
        d.iperf_seconds,
        d.iperf_seconds,
        E2eTest::TcpRev.iperf_args().join(" "),
        d.iperf_seconds
    );
    let _ = writeln!(
        s,
        "| policy | UDP 64 B → LAN kpps | TCP → LAN Gbit/s | TCP ← LAN Gbit/s |\n\
         |---|---:|---:|---:|"
    );
    for p in PolicyKind::ALL {
        let _ = writeln!(
            s,
            "| {} (median) | {} | {} | {} |",
            p.label(),
            scaled(E2eTest::UdpFwd, e.median(p, E2eTest::UdpFwd)),
            scaled(E2eTest::TcpFwd, e.median(p, E2eTest::TcpFwd)),
            scaled(E2eTest::TcpRev, e.median(p, E2eTest::TcpRev)),
        );
    }
    let ratio = |t| e.ratio(t).map_or("–".into(), |q| format!("{q:.3}×"));
    let _ = writeln!(
        s,
        "| **with / without** | {} | {} | {} |",
        ratio(E2eTest::UdpFwd),
        ratio(E2eTest::TcpFwd),
        ratio(E2eTest::TcpRev)
    );

    let _ = writeln!(s, "\n### Policy switches\n");
    let _ = writeln!(
        s,
        "| rep | policy set | router filter | rules | atoms | client filter | `policy set` → router's status shows it |\n\
         |---:|---|---|---:|---:|---|---:|"
    );
    for sw in &e.switches {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {:.0} ms |",
            sw.rep + 1,
            sw.policy.label(),
            if sw.router.enabled { "on" } else { "off" },
            grouped(sw.router.rules),
            grouped(sw.router.atoms),
            if sw.client.enabled {
                format!("on, {} rules", sw.client.rules)
            } else {
                "off".into()
            },
            sw.took.as_secs_f64() * 1e3
        );
    }
    if let Some(sw) = e.switches.iter().find(|s| s.policy == PolicyKind::Acl1000) {
        let _ = writeln!(
            s,
            "\n`tailgate control policy set` of the 1,000-rule policy printed: `{}`.",
            one_line(&sw.set_output, 200)
        );
    }

    let _ = writeln!(s, "\n### What the router counted\n");
    let _ = writeln!(
        s,
        "Summed over the runs of each test. `tun_forward` sees what the router's daemon writes \
         into its TUN (client → LAN): it redirects single packets to `lan0` and NATs and \
         passes GSO super-packets (TCP segments the daemon coalesced) for the kernel to \
         segment. `lan_return` de-NATs what comes back on `lan0`. The filter columns are the \
         router's `filter` counters: new flows accepted (by the allowing rule), packets of \
         accepted flows let in, packets dropped for want of a rule.\n"
    );
    let _ = writeln!(
        s,
        "| policy | test | tun_forward redirected | tun_forward passed GSO | lan_return returned | new flows accepted (by acls[{}]) | packets of known flows | dropped, no rule |\n\
         |---|---|---:|---:|---:|---:|---:|---:|",
        e.acl_entries.saturating_sub(1)
    );
    for p in PolicyKind::ALL {
        for test in TESTS {
            let x = e.xdp(p, test);
            let f = e.filter(p, test);
            let xv = |g: fn(&crate::forward_bench::XdpDelta) -> u64| {
                x.as_ref().map_or("–".into(), |x| grouped(g(x)))
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                p.label(),
                test.name(),
                xv(|x| x.tun_forwarded),
                xv(|x| x.tun_passed_gso),
                xv(|x| x.lan_returned),
                f.as_ref().map_or("–".into(), |f| if f.enabled {
                    format!("{} ({})", f.accepted_new, f.accepted_by_allow)
                } else {
                    "– (off)".into()
                }),
                f.as_ref().map_or("–".into(), |f| if f.enabled {
                    grouped(f.accepted_established)
                } else {
                    "– (off)".into()
                }),
                f.as_ref()
                    .map_or("–".into(), |f| grouped(f.dropped_no_rule)),
            );
        }
    }

    let _ = writeln!(s, "\n### Every run\n");
    let _ = writeln!(
        s,
        "Each pair ran back to back (no policy first). Extra: UDP loss % or TCP retransmits \
         as iperf3 reported them, without / with the policy.\n"
    );
    let _ = writeln!(
        s,
        "| rep | test | no policy | 1,000-rule policy | with / without | extra |\n\
         |---:|---|---:|---:|---:|---:|"
    );
    let reps = e.runs.iter().map(|r| r.rep + 1).max().unwrap_or(0);
    for rep in 0..reps {
        for test in TESTS {
            let find = |p: PolicyKind| {
                e.runs
                    .iter()
                    .find(|r| r.rep == rep && r.test == test && r.policy == p)
            };
            let (a, b) = (find(PolicyKind::NoAcls), find(PolicyKind::Acl1000));
            if a.is_none() && b.is_none() {
                continue;
            }
            let value = |r: Option<&RunRecord>| match r.map(|r| &r.value) {
                Some(Ok(v)) => scaled(test, Some(*v)),
                Some(Err(e)) => format!("failed: {}", one_line(e, 120)),
                None => "–".into(),
            };
            let extra = |r: Option<&RunRecord>| match r {
                Some(r) if test.is_udp() => fmt(r.loss_pct, 1),
                Some(r) => r.retransmits.map_or("–".into(), |x| x.to_string()),
                None => "–".into(),
            };
            let ratio = match (
                a.and_then(|r| r.value.as_ref().ok()),
                b.and_then(|r| r.value.as_ref().ok()),
            ) {
                (Some(a), Some(b)) if *a > 0.0 => format!("{:.3}×", b / a),
                _ => "–".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {} {} | {} | {} | {ratio} | {} / {} |",
                rep + 1,
                test.name(),
                unit(test),
                value(a),
                value(b),
                extra(a),
                extra(b)
            );
        }
    }
    let pairs: Vec<String> = TESTS
        .iter()
        .map(|&t| {
            let v = e.pair_ratios(t);
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            match crate::tunnel_bench::median(&v) {
                Some(m) => format!("{} {m:.3}× ({lo:.3}–{hi:.3}×)", t.name()),
                None => format!("{} –", t.name()),
            }
        })
        .collect();
    let _ = writeln!(
        s,
        "\nThe ratios of the pairs, median (lowest–highest): {}. Their spread is the \
         run-to-run noise of this machine at the time; the summary's ratio is that of the \
         medians.",
        pairs.join("; ")
    );
}

fn classifier(s: &mut String, r: &Report) {
    let _ = writeln!(s, "\n## 2. The classifier in process\n");
    let m = match &r.micro {
        Ok(m) => m,
        Err(e) => {
            let _ = writeln!(s, "Failed: {}", one_line(e, 400));
            return;
        }
    };
    let st = &m.settings;
    let _ = writeln!(
        s,
        "`tailgate::filter::classifier::Classifier` built from generated `FilterRule`s (fixed \
         seed; sources: tailnet node addresses, IPv4 and IPv6, other sites' `/16`s, sometimes \
         `*`, and the test client's address in some rules; destinations: node addresses and \
         subnet routes, many containing the test packet's destination; single ports, lists \
         and ranges of common services; most rules on the default protocols, some TCP, UDP or \
         SCTP only). The last rule alone accepts TCP from `{CLIENT}` to \
         `{SERVER}:{ACCEPTED_PORT}`; nothing accepts port {REFUSED_PORT}, so both lookups go \
         through the whole bitmaps. `PacketFilter::inbound` is what the daemon runs per \
         decrypted packet when a policy is in force: parse; the calling task's one-flow cache \
         (`FlowCache`: a run of packets of one flow skips the shared table); the shared flow \
         table; and the classifier for a packet of no known flow. Median of {} batch(es) of {} \
         ms per figure, build time median of {} build(s), one thread (no other task touches \
         the flow table, so there is no lock contention). Parsing the test packet alone \
         (`filter::packet::parse`) takes {:.1} ns.\n",
        st.batches,
        st.batch_time.as_millis(),
        st.builds,
        m.parse_ns
    );
    let _ = writeln!(
        s,
        "| rules | atoms | build ms | `accepts()` ns, last rule matches | `accepts()` ns, no rule matches | `inbound()` ns, accepted flow in the task's cache | `inbound()` ns, accepted flow from the flow table | `inbound()` ns, dropped (no rule) |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in &m.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            grouped(row.rules as u64),
            grouped(row.atoms as u64),
            row.build_ms,
            row.accepts_match_ns,
            row.accepts_miss_ns,
            row.inbound_cached_ns,
            row.inbound_table_ns,
            row.inbound_drop_ns
        );
    }
    let _ = writeln!(
        s,
        "\nA lookup is three hash-map probes per prefix length present plus an AND over \
         `atoms / 64` words, so it grows with the number of atoms, not with the position of \
         the matching rule; a packet of an accepted flow never reaches it."
    );
}

fn notes(s: &mut String, r: &Report) {
    let e = &r.e2e;
    let mut notes: Vec<String> = e.notes.clone();
    if let Some(err) = &e.error {
        notes.push(format!("end to end stopped: {}", one_line(err, 400)));
    }
    for p in PolicyKind::ALL {
        for test in TESTS {
            let f = e.failures(p, test);
            if let Some(first) = f.first() {
                notes.push(format!(
                    "{} / {}: {} run(s) failed: {}",
                    p.label(),
                    test.name(),
                    f.len(),
                    one_line(first, 200)
                ));
            }
        }
    }
    if let Some(f) = e.router_filter(PolicyKind::Acl1000) {
        if f.rules as usize != e.expected_router_rules {
            notes.push(format!(
                "the router's filter held {} rules, {} expected",
                f.rules, e.expected_router_rules
            ));
        }
    }
    if notes.is_empty() {
        return;
    }
    let _ = writeln!(s, "\n## Notes\n");
    for n in notes {
        let _ = writeln!(s, "- {}", one_line(&n, 500));
    }
}
