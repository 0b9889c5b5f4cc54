//! The MagicDNS benchmark: queries per second of tailgate's resolver for tailnet names and for
//! forwarded names against a dnsmasq forwarder configured the same way (same names, same
//! upstream, cache off), measured with dnsperf in one run. Prints Markdown tables with the
//! tailgate / dnsmasq ratios and writes them, with a description of the machine and the
//! method, to a file.
//!
//! Usage: `tailgate-bench-dns [--quick] [--out PATH] PATH/TO/tailgate` (as root;
//! `cargo xtask bench dns [--quick] [--out PATH]` builds tailgate and runs this).

use anyhow::{bail, Context, Result};
use tailgate_bench::args::BenchArgs;
use tailgate_bench::dns_bench::{self, Mode, Settings};
use tailgate_bench::tunnel_bench;

const USAGE: &str = "usage: tailgate-bench-dns [--quick] [--out PATH] PATH/TO/tailgate";

fn main() -> Result<()> {
    let Some(args) = BenchArgs::from_env(USAGE, "docs/benchmarks-dns.md", &[], &[])? else {
        return Ok(());
    };
    let mode = if args.quick { Mode::Quick } else { Mode::Full };
    let (out, tailgate) = (args.out, args.tailgate);
    let missing = dns_bench::missing_tools();
    if !missing.is_empty() {
        bail!(
            "missing tools: {} (cargo xtask setup installs them)",
            missing.join(", ")
        );
    }

    tunnel_bench::install_interrupt_handler();
    let report = dns_bench::run(&Settings::new(tailgate, mode));
    if tunnel_bench::interrupted() {
        bail!("interrupted: namespaces and processes removed, no report written");
    }
    let markdown = dns_bench::render_markdown(&report);
    println!("\n{markdown}");
    for m in report.missing_figures() {
        println!("warning: {m}");
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, &markdown).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "== report written to {} ({:.0} s)",
        out.display(),
        report.elapsed.as_secs_f64()
    );
    if report.setup_error.is_some() {
        bail!("the lab could not be built (see the report)");
    }
    Ok(())
}
