//! Smoke test of the relay benchmark (`cargo xtask bench relay`): short runs of every path
//! (one relay over TLS and over plain HTTP, two meshed relays, direct UDP), checking that
//! each got packets through and that the report has every row. It checks no rates: those
//! depend on the machine.
//!
//! Needs root and a `tailgate` binary: `TAILGATE_BIN` (which `cargo xtask test` sets), else
//! `target/release/tailgate` of this workspace. Skipped, with the reason, when one is missing.
//! The namespace and the relay processes are removed on drop.

use std::time::Duration;

use tailgate_bench::lab;
use tailgate_bench::relay_bench::{self, Durations, Path_, Run, SIZES};

#[test]
fn relay_bench_measures_every_path() {
    if !lab::is_root() {
        eprintln!("skipping the relay benchmark smoke test: not running as root");
        return;
    }
    let bin = match lab::tailgate_bin() {
        Ok(b) => b,
        Err(reason) => {
            eprintln!("skipping the relay benchmark smoke test: {reason}");
            return;
        }
    };
    let durations = Durations {
        run: Duration::from_millis(500),
        runs: 1,
    };
    let report = relay_bench::run(&bin, durations, Vec::new()).expect("the lab is built");
    let md = relay_bench::render_markdown(&report);
    assert!(report.failures.is_empty(), "{md}");
    for path in Path_::ALL {
        for size in SIZES {
            let got = report.median(path, size, |r: &Run| r.received as f64);
            assert!(
                got.is_some_and(|n| n > 0.0),
                "{} at {size} B: {got:?} packets\n\n{md}",
                path.label()
            );
        }
        assert!(md.contains(path.label()), "{md}");
    }
}
