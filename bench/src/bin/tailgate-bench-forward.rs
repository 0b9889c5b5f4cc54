//! The forwarding benchmark: a subnet router's XDP fast path against its nftables fallback,
//! end to end through a tunnel and for the router stage alone, plus the longest-prefix-match
//! tables with 1,000,000 prefixes. Prints Markdown tables with the XDP / nftables ratios and
//! writes them, with a description of the machine, to a file.
//!
//! Usage: `tailgate-bench-forward [--quick] [--out PATH] PATH/TO/tailgate` (as root;
//! `cargo xtask bench forward [--quick] [--out PATH]` builds tailgate and runs this).

use anyhow::{bail, Context, Result};
use tailgate_bench::args::BenchArgs;
use tailgate_bench::forward_bench::{self, Mode, Settings};
use tailgate_bench::tunnel_bench;

const USAGE: &str = "usage: tailgate-bench-forward [--quick] [--out PATH] PATH/TO/tailgate";

fn main() -> Result<()> {
    // Before any thread exists: tailgate daemons inherit the environment.
    if let Some(v) = tunnel_bench::clear_mtu_override() {
        println!("note: ignoring TS_DEBUG_MTU={v}: every tunnel runs at MTU 1280");
    }
    // `--smoke` (not in the usage): the shortest run that still produces every figure (tests).
    let Some(args) = BenchArgs::from_env(USAGE, "docs/benchmarks-forward.md", &["--smoke"], &[])?
    else {
        return Ok(());
    };
    let mode = match (args.has("--smoke"), args.quick) {
        (true, _) => Mode::Smoke,
        (false, true) => Mode::Quick,
        (false, false) => Mode::Full,
    };
    let (out, tailgate) = (args.out, args.tailgate);
    if !tailgate::xdp::ebpf_object_embedded() {
        bail!(
            "this benchmark was built without the eBPF object (TAILGATE_EBPF_OBJ): run it \
             with `cargo xtask bench forward`"
        );
    }
    let missing = forward_bench::missing_tools();
    if !missing.is_empty() {
        bail!(
            "missing tools: {} (cargo xtask setup installs them)",
            missing.join(", ")
        );
    }

    tunnel_bench::install_interrupt_handler();
    let settings = Settings::new(tailgate, mode);
    let report = forward_bench::run(&settings);
    if tunnel_bench::interrupted() {
        bail!("interrupted: namespaces, processes and XDP programs removed, no report written");
    }
    let markdown = forward_bench::render_markdown(&report);
    println!("\n{markdown}");
    for m in report.missing_figures() {
        println!("warning: no figure for {m}");
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
    Ok(())
}
