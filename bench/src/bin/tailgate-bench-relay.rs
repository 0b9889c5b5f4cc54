//! The relay benchmark: packets per second and throughput between two relay clients through
//! `tailgate derp serve` (TLS, plain HTTP, a mesh of two servers) against direct UDP, and STUN
//! binding answers per second in XDP against the userspace server, in one run. Prints
//! Markdown tables and writes them to a file.
//!
//! Usage: `tailgate-bench-relay [--quick] [--out PATH] PATH/TO/tailgate` (as root;
//! `cargo xtask bench relay [--quick] [--out PATH]` builds tailgate and runs this).

use anyhow::{bail, Context, Result};
use tailgate_bench::args::BenchArgs;
use tailgate_bench::relay_bench::{self, Durations};
use tailgate_bench::stun_bench::{self, StunBenchOptions};
use tailgate_bench::tunnel_bench;

const USAGE: &str = "usage: tailgate-bench-relay [--quick] [--out PATH] PATH/TO/tailgate";

fn main() -> Result<()> {
    let Some(args) = BenchArgs::from_env(USAGE, "docs/benchmarks-relay.md", &[], &[])? else {
        return Ok(());
    };
    let durations = if args.quick {
        Durations::quick()
    } else {
        Durations::full()
    };
    tunnel_bench::install_interrupt_handler();
    println!("== STUN binding answers: XDP vs userspace");
    let stun = stun_bench::run(if args.quick {
        StunBenchOptions::quick()
    } else {
        StunBenchOptions::full()
    })?;
    let report = relay_bench::run(&args.tailgate, durations, vec![stun.markdown()])?;
    if tunnel_bench::interrupted() {
        bail!("interrupted: namespaces and processes removed, no report written");
    }
    let markdown = relay_bench::render_markdown(&report);
    println!("\n{markdown}");
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&args.out, &markdown)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "== report written to {} ({:.0} s)",
        args.out.display(),
        report.elapsed.as_secs_f64()
    );
    if !report.failures.is_empty() {
        bail!("some paths could not be measured (see the report)");
    }
    Ok(())
}
