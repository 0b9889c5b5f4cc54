//! Smoke test of the forwarding benchmark (`cargo xtask bench forward`): runs it in its
//! shortest mode and checks that the report has a number in every row and that the XDP rows
//! show XDP counters that moved. It checks no rates: those depend on the machine.
//!
//! Needs root, the eBPF object embedded (`TAILGATE_EBPF_OBJ` at build time) and a `tailgate`
//! binary built with it: `TAILGATE_BIN` (which `cargo xtask test` sets), else
//! `target/release/tailgate` of this workspace. Skipped, with the reason, when one is missing.
//! Everything the benchmark creates is removed on drop.

use tailgate_bench::forward_bench::{
    self, ForwardVariant, Mode, ReturnVariant, RouterPath, Settings,
};
use tailgate_bench::lab;

fn skip_reason() -> Option<String> {
    if !lab::is_root() {
        return Some("not running as root".into());
    }
    if !tailgate::xdp::ebpf_object_embedded() {
        return Some("eBPF object not embedded (build with TAILGATE_EBPF_OBJ)".into());
    }
    let missing = forward_bench::missing_tools();
    if !missing.is_empty() {
        return Some(format!("missing tools: {}", missing.join(", ")));
    }
    lab::tailgate_bin().err()
}

#[test]
fn forward_bench_reports_every_figure() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipping the forwarding benchmark smoke test: {reason}");
        return;
    }
    let bin = lab::tailgate_bin().expect("checked by skip_reason");
    eprintln!("forwarding benchmark smoke test with {}", bin.display());
    let report = forward_bench::run(&Settings::new(bin, Mode::Smoke));
    let md = forward_bench::render_markdown(&report);

    let missing = report.missing_figures();
    assert!(
        missing.is_empty(),
        "figures without a number: {missing:#?}\n\n{md}"
    );
    let problems = report.xdp_counter_problems();
    assert!(
        problems.is_empty(),
        "XDP rows without XDP counters: {problems:#?}\n\n{md}"
    );

    for heading in [
        "## Summary",
        "## 1. End to end through the router",
        "## 2. Router stage only",
        "### TUN → LAN",
        "### LAN → TUN",
        "## 3. Longest-prefix match",
        "### Userspace `PrefixTable`",
        "### BPF LPM trie (`tun_forward`)",
    ] {
        assert!(md.contains(heading), "no {heading:?} in\n{md}");
    }
    let rows: Vec<String> = RouterPath::ALL
        .iter()
        .map(|p| format!("| {p} |"))
        .chain(
            RouterPath::ALL
                .iter()
                .filter(|p| p.is_xdp())
                .map(|p| format!("| **{p} / nftables** |")),
        )
        .chain(ForwardVariant::ALL.iter().map(|v| format!("| {v} |")))
        .chain(ReturnVariant::ALL.iter().map(|v| format!("| {v} |")))
        .collect();
    for row in &rows {
        let line = md
            .lines()
            .find(|l| l.starts_with(row.as_str()))
            .unwrap_or_else(|| panic!("no row {row:?} in\n{md}"));
        assert!(
            line.chars().any(|c| c.is_ascii_digit()),
            "row without numbers: {line}"
        );
        assert!(!line.contains("failed"), "failed row: {line}");
    }
    // The ratio rows have a number in every ratio column.
    for line in md.lines().filter(|l| l.contains(" / nftables** |")) {
        assert_eq!(line.matches('×').count(), 4, "ratio row with a gap: {line}");
    }
}
