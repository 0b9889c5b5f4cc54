//! The Markdown report of a MagicDNS benchmark run.

use std::fmt::Write as _;
use std::path::Path;

use super::dnsperf::{Load, QUERY_TIMEOUT_S};
use super::{
    one_line, Cell, Mode, QuerySet, Report, Resolver, DNSMASQ_ADDR, DOMAIN, FORWARDED_NAMES,
    FORWARDED_V4, FORWARDED_V6, FORWARDED_ZONE, HOSTNAME, PEERS, TAILGATE_ADDR, UPLINK_NODE,
    UPSTREAM_ADDR,
};
use crate::forward_bench::report::grouped;

fn fmt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "–".into(),
    }
}

/// Queries per second with thousands separators.
fn fmt_qps(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() && v >= 0.0 => grouped(v.round() as u64),
        _ => "–".into(),
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "–".into(), |r| format!("{r:.2}×"))
}

/// A figure of the summary: label, how to print it, how to get it from a cell.
struct Figure {
    label: String,
    show: fn(Option<f64>) -> String,
    value: fn(&Cell) -> Option<f64>,
}

fn figures(light_qps: u32) -> Vec<(QuerySet, Figure)> {
    let mut v = Vec::new();
    for set in QuerySet::ALL {
        v.push((
            set,
            Figure {
                label: format!("{set}, queries/s"),
                show: fmt_qps,
                value: Cell::qps,
            },
        ));
    }
    for set in QuerySet::ALL {
        v.push((
            set,
            Figure {
                label: format!(
                    "{set}, mean latency at {} queries/s, µs",
                    grouped(u64::from(light_qps))
                ),
                show: |v| fmt(v, 0),
                value: Cell::light_latency_us,
            },
        ));
    }
    for set in QuerySet::ALL {
        v.push((
            set,
            Figure {
                label: format!("{set}, CPU µs per query (resolver process)"),
                show: |v| fmt(v, 1),
                value: Cell::cpu_us,
            },
        ));
    }
    v
}

/// The report: machine, summary with the tailgate / dnsmasq ratios, results, method, notes
/// and every run.
pub fn render_markdown(r: &Report) -> String {
    let mut s = String::new();
    let d = &r.settings.durations;
    let _ = writeln!(s, "# MagicDNS benchmark: tailgate's resolver vs dnsmasq\n");
    let how = match r.settings.mode {
        Mode::Full => format!(
            "Each figure is the median of {} runs per resolver and query set ({} s at full \
             load, {} s at {} queries/s).",
            d.repeats,
            d.load_seconds,
            d.light_seconds,
            grouped(u64::from(d.light_qps))
        ),
        Mode::Quick => format!(
            "Quick mode: one run per figure ({} s at full load, {} s at {} queries/s), so the \
             figures are only indicative.",
            d.load_seconds,
            d.light_seconds,
            grouped(u64::from(d.light_qps))
        ),
    };
    let _ = writeln!(
        s,
        "Written by `cargo xtask bench dns{}`. {how} The whole run took {:.0} s. Figures are as \
         measured on a shared machine; nothing is tuned per resolver.\n",
        if r.settings.mode == Mode::Quick {
            " --quick"
        } else {
            ""
        },
        r.elapsed.as_secs_f64()
    );
    machine(&mut s, r);
    if let Some(e) = &r.setup_error {
        let _ = writeln!(
            s,
            "## The lab could not be built\n\n```\n{}\n```\n",
            e.trim()
        );
    }
    summary(&mut s, r);
    results(&mut s, r);
    method(&mut s, r);
    notes(&mut s, r);
    every_run(&mut s, r);
    s
}

fn machine(s: &mut String, r: &Report) {
    s.push_str(
        &r.machine
            .markdown(&[("dnsperf", &r.dnsperf), ("dnsmasq", &r.dnsmasq)]),
    );
    s.push('\n');
}

fn summary(s: &mut String, r: &Report) {
    let _ = writeln!(
        s,
        "## Summary\n\n\
         tailgate's figure divided by dnsmasq's, both measured in this run, from the same \
         namespace, with the same dnsperf load and the same upstream. Queries per second: \
         higher is better; latency and CPU time per query: lower is better.\n"
    );
    let _ = writeln!(
        s,
        "| figure | tailgate | dnsmasq | tailgate / dnsmasq |\n|---|---:|---:|---:|"
    );
    for (set, f) in figures(r.settings.durations.light_qps) {
        let get = |res| r.cell(res, set).and_then(f.value);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            f.label,
            (f.show)(get(Resolver::Tailgate)),
            (f.show)(get(Resolver::Dnsmasq)),
            fmt_ratio(r.ratio(set, f.value))
        );
    }
    s.push('\n');
}

fn results(s: &mut String, r: &Report) {
    let d = &r.settings.durations;
    let rate = grouped(u64::from(d.light_qps));
    let _ = writeln!(
        s,
        "## Results\n\n\
         Full load: dnsperf with {} clients and at most {} queries in flight, as fast as the \
         answers come back. Light load: one client at {rate} queries/s.\n",
        d.clients, d.outstanding
    );
    let _ = writeln!(
        s,
        "| resolver | query set | queries/s | mean latency under load, ms | lost % | NOERROR % \
         | mean latency at {rate} q/s, µs | max latency at {rate} q/s, µs | CPU µs/query |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for set in QuerySet::ALL {
        for resolver in Resolver::ALL {
            let Some(c) = r.cell(resolver, set) else {
                continue;
            };
            let _ = writeln!(
                s,
                "| {resolver} | {set} | {} | {} | {} | {} | {} | {} | {} |",
                fmt_qps(c.qps()),
                fmt(c.load_latency_ms(), 2),
                fmt(c.lost_pct(), 2),
                fmt(c.noerror_pct(), 1),
                fmt(c.light_latency_us(), 0),
                fmt(c.light_max_latency_us(), 0),
                fmt(c.cpu_us(), 1)
            );
        }
    }
    s.push('\n');
}

fn method(s: &mut String, r: &Report) {
    let d = &r.settings.durations;
    let full = Load {
        server: "ADDR".into(),
        seconds: d.load_seconds,
        clients: d.clients,
        outstanding: d.outstanding,
        max_qps: None,
    };
    let light = Load {
        clients: 1,
        seconds: d.light_seconds,
        max_qps: Some(d.light_qps),
        ..full.clone()
    };
    let cmd = |l: &Load| format!("dnsperf {}", l.args(Path::new("FILE")).join(" "));
    let _ = writeln!(
        s,
        "## Method\n\n\
         - **Lab.** One tailgate daemon in static mode (`tailgate daemon --no-xdp`, with \
         `TS_ACCEPT_DNS=false`, in a network namespace) with a `[dns]` table: `hostname = \
         \"{HOSTNAME}\"`, `domain = \"{DOMAIN}\"`, {PEERS} static peers with `name = \
         \"peer01\"` … `\"peer{PEERS}\"` (one `/32` and one `/128` each), and `nameservers = \
         [\"{UPSTREAM_ADDR}\"]`. Its resolver listens on `{TAILGATE_ADDR}:53`. XDP is off: it \
         plays no part in DNS.\n\
         - **Upstream.** A second namespace, joined to the node's by a veth \
         (`{UPLINK_NODE}` ↔ `{UPSTREAM_ADDR}`), runs dnsmasq as the authority for \
         `{FORWARDED_ZONE}`: `--address=/{FORWARDED_ZONE}/{FORWARDED_V4}` and \
         `--address=/{FORWARDED_ZONE}/{FORWARDED_V6}`, `--no-resolv --no-hosts`. It answers \
         every name under the zone itself and serves both resolvers.\n\
         - **Comparison.** dnsmasq in the node's namespace on `{DNSMASQ_ADDR}:53`, configured \
         like the tailgate resolver: the same {} tailnet names (A and AAAA) from an \
         `--addn-hosts` file, `--local=/{DOMAIN}/` (other names in the tailnet domain are not \
         forwarded), everything else forwarded to `--server={UPSTREAM_ADDR}`, `--no-resolv \
         --no-hosts`, and **`--cache-size=0`**. tailgate's resolver does not cache forwarded \
         answers (every forwarded query goes to the upstream, see `gateway/src/dns/forward.rs`), \
         so dnsmasq's cache is off to compare forwarding with forwarding; with its cache on, \
         dnsmasq would answer the forwarded set from memory.\n\
         - **Query sets.** *tailnet names*: A and AAAA of `{HOSTNAME}.{DOMAIN}` and \
         `peer01.{DOMAIN}` … ({} queries, answered by the resolver itself). *forwarded \
         names*: A and AAAA of `host01.{FORWARDED_ZONE}` … `host{FORWARDED_NAMES}.{FORWARDED_ZONE}` \
         ({} queries, each one sent upstream). dnsperf cycles through its file.\n\
         - **Checks.** Before any load, `dig +short` asks both resolvers for a tailnet A and \
         AAAA and a forwarded A and AAAA and compares the answers with the expected \
         addresses.\n\
         - **Load.** dnsperf runs in the node's namespace, over UDP: full load `{}` and light \
         load `{}` (a query without an answer after {QUERY_TIMEOUT_S} s counts as lost, and so \
         may the few queries still in flight when a run ends). \"queries/s\", the \
         latencies, \"lost\" and the response codes are dnsperf's. A warm-up run of {} s per \
         resolver and query set precedes the measurements and is not counted. Per \
         repetition, each query set runs against both resolvers one after the other; the \
         first resolver alternates between repetitions.\n\
         - **CPU µs/query.** utime + stime of the resolver's process (`/proc/PID/stat`: the \
         whole tailgate daemon, or the dnsmasq forwarder) over the full-load run, divided by \
         the answered queries. The upstream dnsmasq's and dnsperf's CPU time are not in it.\n\
         - dnsperf, the resolver and (for forwarded names) the upstream share this machine's \
         {} cores, so the full-load figures are those of the whole set-up, not of the resolver \
         alone. tailgate's resolver runs on the daemon's multi-threaded runtime; dnsmasq is \
         single-threaded.\n",
        super::tailnet_hosts().len(),
        QuerySet::Tailnet.queries().len(),
        QuerySet::Forwarded.queries().len(),
        cmd(&full),
        cmd(&light),
        d.warmup_seconds,
        r.machine.cores
    );
}

fn notes(s: &mut String, r: &Report) {
    let mut lines = Vec::new();
    let failed: Vec<_> = r.checks.iter().filter(|c| !c.ok()).collect();
    if r.checks.is_empty() {
        lines.push("- The answers were not checked.".to_string());
    } else if failed.is_empty() {
        lines.push(format!(
            "- Answers checked before the load: all {} as expected ({}).",
            r.checks.len(),
            super::check_questions()
                .iter()
                .map(|(q, a)| format!("`{q}` → `{a}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    } else {
        for c in failed {
            lines.push(format!(
                "- Wrong answer from {}: `{}` should be `{}`, got {}.",
                c.resolver,
                c.question,
                c.want,
                match &c.got {
                    Ok(a) => format!("`{}`", one_line(a, 200)),
                    Err(e) => one_line(e, 300),
                }
            ));
        }
    }
    match &r.tailgate_stats {
        Ok(v) => {
            let keys = [
                "queries",
                "answered_local",
                "forwarded",
                "servfail",
                "upstream_failures",
                "dropped",
            ];
            let parts: Vec<String> = keys
                .iter()
                .filter_map(|k| v.get(*k).and_then(|x| x.as_u64()).map(|n| (k, n)))
                .map(|(k, n)| format!("{k} {}", grouped(n)))
                .collect();
            if !parts.is_empty() {
                lines.push(format!(
                    "- tailgate's resolver counters after the run (`tailgate dns status`, \
                     warm-up and checks included): {}.",
                    parts.join(", ")
                ));
            }
        }
        Err(e) => lines.push(format!(
            "- tailgate's resolver counters could not be read: {}",
            one_line(e, 300)
        )),
    }
    for set in QuerySet::ALL {
        for resolver in Resolver::ALL {
            let Some(c) = r.cell(resolver, set) else {
                continue;
            };
            let codes = rcodes(c);
            if codes.iter().any(|(n, _)| n != "NOERROR") {
                lines.push(format!(
                    "- {resolver}, {set}: response codes over all runs: {}.",
                    codes
                        .iter()
                        .map(|(n, c)| format!("{n} {}", grouped(*c)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            for f in c.failures() {
                lines.push(format!(
                    "- {resolver}, {set}: a run failed: {}",
                    one_line(&f, 400)
                ));
            }
        }
    }
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(s, "## Notes\n\n{}\n", lines.join("\n"));
}

/// The response codes of every run of a cell, summed.
fn rcodes(c: &Cell) -> Vec<(String, u64)> {
    let mut all: Vec<(String, u64)> = Vec::new();
    for run in c
        .load
        .iter()
        .chain(&c.light)
        .filter_map(|r| r.as_ref().ok())
    {
        for (name, n) in &run.rcodes {
            match all.iter_mut().find(|(m, _)| m == name) {
                Some((_, total)) => *total += n,
                None => all.push((name.clone(), *n)),
            }
        }
    }
    all
}

fn every_run(s: &mut String, r: &Report) {
    let _ = writeln!(
        s,
        "## Every run\n\n| resolver | query set | figure | runs |\n|---|---|---|---|"
    );
    let list = |v: Vec<String>| {
        if v.is_empty() {
            "–".to_string()
        } else {
            v.join(", ")
        }
    };
    for set in QuerySet::ALL {
        for resolver in Resolver::ALL {
            let Some(c) = r.cell(resolver, set) else {
                continue;
            };
            let load = |f: fn(&super::DnsperfRun) -> String| {
                list(
                    c.load
                        .iter()
                        .map(|x| x.as_ref().map_or_else(|_| "failed".into(), f))
                        .collect(),
                )
            };
            let light = |f: fn(&super::DnsperfRun) -> String| {
                list(
                    c.light
                        .iter()
                        .map(|x| x.as_ref().map_or_else(|_| "failed".into(), f))
                        .collect(),
                )
            };
            let rows = [
                ("queries/s", load(|x| grouped(x.qps.round() as u64))),
                (
                    "mean latency under load, ms",
                    load(|x| format!("{:.2}", x.avg_latency_s * 1e3)),
                ),
                ("lost %", load(|x| format!("{:.2}", x.lost_pct()))),
                ("queries sent under load", load(|x| grouped(x.sent))),
                (
                    "CPU µs/query",
                    list(
                        c.cpu_us_per_query
                            .iter()
                            .map(|v| format!("{v:.1}"))
                            .collect(),
                    ),
                ),
                (
                    "light load: mean / max latency, µs",
                    light(|x| {
                        format!(
                            "{:.0} / {:.0}",
                            x.avg_latency_s * 1e6,
                            x.max_latency_s * 1e6
                        )
                    }),
                ),
                (
                    "light load: answered / sent",
                    light(|x| format!("{}/{}", grouped(x.completed), grouped(x.sent))),
                ),
            ];
            for (figure, runs) in rows {
                let _ = writeln!(s, "| {resolver} | {set} | {figure} | {runs} |");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(fmt_qps(Some(181227.4)), "181,227");
        assert_eq!(fmt_qps(None), "–");
        assert_eq!(fmt_qps(Some(f64::NAN)), "–");
        assert_eq!(fmt(Some(1.234), 1), "1.2");
        assert_eq!(fmt_ratio(Some(0.5)), "0.50×");
        assert_eq!(fmt_ratio(None), "–");
    }
}
