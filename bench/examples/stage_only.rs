use tailgate_bench::forward_bench::{stage, Durations};
fn main() {
    let d = Durations::quick();
    let r = stage::return_lan_to_tun(&d);
    for row in &r.rows {
        println!(
            "{:<50} offered {:>8.0} delivered {:>8.0} ns {:?} fail {:?}",
            row.variant.to_string(),
            row.offered_pps().unwrap_or(0.0) / 1e3,
            row.delivered_pps().unwrap_or(0.0) / 1e3,
            row.ns_per_pkt(),
            row.failures
        );
    }
}
