//! Smoke test of the MagicDNS benchmark (`cargo xtask bench dns`): runs it in its quick mode
//! and checks that both resolvers gave the expected answers, that every figure has a number,
//! that the answers under load were good (NOERROR) and that the summary has every ratio. It
//! checks no rates: those depend on the machine.
//!
//! Needs root, `dnsperf`, `dnsmasq` and `dig` (`cargo xtask setup` installs them) and a
//! `tailgate` binary: `TAILGATE_BIN` (which `cargo xtask test` sets), else
//! `target/release/tailgate` of this workspace. Skipped, with the reason, when one is missing.
//! Everything the benchmark creates is removed on drop.

use tailgate_bench::dns_bench::{self, Mode, QuerySet, Resolver, Settings};
use tailgate_bench::lab;

fn skip_reason() -> Option<String> {
    if !lab::is_root() {
        return Some("not running as root".into());
    }
    let missing = dns_bench::missing_tools();
    if !missing.is_empty() {
        return Some(format!("missing tools: {}", missing.join(", ")));
    }
    lab::tailgate_bin().err()
}

#[test]
fn dns_bench_reports_every_figure() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipping the MagicDNS benchmark smoke test: {reason}");
        return;
    }
    let bin = lab::tailgate_bin().expect("checked by skip_reason");
    eprintln!("MagicDNS benchmark smoke test with {}", bin.display());
    let report = dns_bench::run(&Settings::new(bin, Mode::Quick));
    let md = dns_bench::render_markdown(&report);

    let missing = report.missing_figures();
    assert!(
        missing.is_empty(),
        "figures without a number or failed checks: {missing:#?}\n\n{md}"
    );
    assert_eq!(report.checks.len(), 2 * dns_bench::check_questions().len());
    for set in QuerySet::ALL {
        for resolver in Resolver::ALL {
            let c = report.cell(resolver, set).expect("every cell exists");
            let qps = c.qps().unwrap_or(0.0);
            assert!(qps > 0.0, "{resolver}, {set}: {qps} queries/s\n\n{md}");
            let answered: u64 = c.load.iter().flatten().map(|r| r.completed).sum();
            assert!(answered > 0, "{resolver}, {set}: nothing answered\n\n{md}");
            // Good answers, not SERVFAIL: a correctness property, not a rate.
            let good = c.noerror_pct().unwrap_or(0.0);
            assert!(good >= 99.0, "{resolver}, {set}: {good} % NOERROR\n\n{md}");
            let lat = c.light_latency_us().unwrap_or(0.0);
            assert!(lat > 0.0, "{resolver}, {set}: latency {lat}\n\n{md}");
        }
        let r = report.ratio(set, dns_bench::Cell::qps);
        assert!(
            r.is_some_and(|r| r.is_finite() && r > 0.0),
            "{set}: ratio {r:?}\n\n{md}"
        );
    }
    // tailgate's resolver counted what it answered and what it forwarded.
    let stats = report
        .tailgate_stats
        .as_ref()
        .unwrap_or_else(|e| panic!("tailgate dns status: {e}\n\n{md}"));
    for key in ["answered_local", "forwarded"] {
        let n = stats.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
        assert!(n > 0, "tailgate's {key} counter is {n}: {stats}");
    }

    for heading in [
        "## Machine",
        "## Summary",
        "## Results",
        "## Method",
        "## Every run",
    ] {
        assert!(md.contains(heading), "no {heading:?} in\n{md}");
    }
    for row in [
        "| tailnet names, queries/s |",
        "| forwarded names, queries/s |",
    ] {
        let line = md
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no row {row:?} in\n{md}"));
        assert!(line.ends_with("× |"), "summary row without a ratio: {line}");
    }
}
