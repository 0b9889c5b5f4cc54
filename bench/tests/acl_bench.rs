//! Smoke test of the access-control benchmark's in-process part (`cargo xtask bench acl`,
//! section 2): the classifier micro-benchmark in its shortest setting. It checks that every
//! figure is a positive, finite number and that the classifier answered as the benchmark
//! expects; it checks no rates (those depend on the machine). No root, no network: the
//! end-to-end part is not run here.

use tailgate_bench::acl_bench::micro::{self, MicroSettings};

#[test]
fn classifier_micro_benchmark_reports_sane_figures() {
    let sizes = [10, 100, 1_000];
    let report = micro::measure(&sizes, &MicroSettings::smoke()).expect("micro-benchmark");
    assert!(
        report.parse_ns.is_finite() && report.parse_ns > 0.0,
        "{report:?}"
    );
    assert_eq!(
        report.rows.iter().map(|r| r.rules).collect::<Vec<_>>(),
        sizes
    );
    for row in &report.rows {
        for (name, v) in [
            ("build ms", row.build_ms),
            ("accepts, match", row.accepts_match_ns),
            ("accepts, no match", row.accepts_miss_ns),
            ("inbound, task's flow cache", row.inbound_cached_ns),
            ("inbound, flow table", row.inbound_table_ns),
            ("inbound, dropped", row.inbound_drop_ns),
        ] {
            assert!(
                v.is_finite() && v > 0.0,
                "{} rules: {name} = {v}",
                row.rules
            );
        }
        assert!(row.atoms >= row.rules, "{row:?}");
        assert_eq!(row.matched_acl, Some(row.rules as u32 - 1), "{row:?}");
        assert_eq!(row.refused_acl, None, "{row:?}");
    }
}
