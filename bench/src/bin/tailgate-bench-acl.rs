//! The access-control benchmark: forwarding through a subnet router on its XDP fast path with
//! a 1,000-rule tailnet policy against no policy, in one lab and one run (the policy is
//! switched with `tailgate control policy set`), plus an in-process micro-benchmark of the
//! packet filter's classifier with 10 to 10,000 rules. Prints Markdown tables with the ratio
//! (with / without) and whether the cost stays within 10 %, and writes them, with a
//! description of the machine, to a file.
//!
//! Usage: `tailgate-bench-acl [--quick] [--out PATH] PATH/TO/tailgate` (as root;
//! `cargo xtask bench acl [--quick] [--out PATH]` builds tailgate and runs this).

use anyhow::{bail, Context, Result};
use tailgate_bench::acl_bench::{self, report, Mode, Settings};
use tailgate_bench::args::BenchArgs;
use tailgate_bench::tunnel_bench;

const USAGE: &str = "usage: tailgate-bench-acl [--quick] [--out PATH] PATH/TO/tailgate";

fn main() -> Result<()> {
    // Before any thread exists: tailgate daemons inherit the environment.
    if let Some(v) = tunnel_bench::clear_mtu_override() {
        println!("note: ignoring TS_DEBUG_MTU={v}: every tunnel runs at MTU 1280");
    }
    let Some(args) = BenchArgs::from_env(USAGE, "docs/benchmarks-acl.md", &[], &[])? else {
        return Ok(());
    };
    let mode = if args.quick { Mode::Quick } else { Mode::Full };
    let (out, tailgate) = (args.out, args.tailgate);
    if !tailgate::xdp::ebpf_object_embedded() {
        bail!(
            "this benchmark was built without the eBPF object (TAILGATE_EBPF_OBJ): run it \
             with `cargo xtask bench acl`"
        );
    }
    let missing = acl_bench::missing_tools();
    if !missing.is_empty() {
        bail!(
            "missing tools: {} (cargo xtask setup installs them)",
            missing.join(", ")
        );
    }

    tunnel_bench::install_interrupt_handler();
    let settings = Settings::new(tailgate, mode);
    let r = acl_bench::run(&settings);
    if tunnel_bench::interrupted() {
        bail!("interrupted: namespaces and processes removed, no report written");
    }
    let markdown = acl_bench::render_markdown(&r);
    println!("\n{markdown}");
    match report::goal_met(&r) {
        Some(true) => println!("goal (cost ≤ 10 %): met"),
        Some(false) => println!("goal (cost ≤ 10 %): NOT met in this run"),
        None => println!("goal (cost ≤ 10 %): not checked, a figure is missing"),
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, &markdown).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "== report written to {} ({:.0} s)",
        out.display(),
        r.elapsed.as_secs_f64()
    );
    if let Some(e) = &r.e2e.error {
        bail!("the end-to-end part did not complete: {e}");
    }
    Ok(())
}
