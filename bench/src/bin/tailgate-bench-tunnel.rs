//! The tunnel benchmark: plain veth, wireguard-go, boringtun-cli and tailgate (plus
//! "tailgate (offloads off)" when the daemon has `--no-offload`) in one run, each between two
//! namespaces joined by a veth, MTU 1280. Prints a Markdown table with tailgate's ratios and
//! writes it, with a description of the machine, to a file.
//!
//! Usage: `tailgate-bench-tunnel [--quick] [--out PATH] PATH/TO/tailgate` (as root;
//! `cargo xtask bench tunnel [--quick] [--out PATH]` builds tailgate and runs this).

use anyhow::{bail, Context, Result};
use tailgate_bench::args::BenchArgs;
use tailgate_bench::tunnel_bench::{self, Machine, Settings};

const USAGE: &str = "usage: tailgate-bench-tunnel [--quick] [--out PATH] PATH/TO/tailgate";

fn main() -> Result<()> {
    // Before any thread exists: tailgate daemons inherit the environment.
    if let Some(v) = tunnel_bench::clear_mtu_override() {
        println!("note: ignoring TS_DEBUG_MTU={v}: every tunnel runs at MTU 1280");
    }
    let Some(args) = BenchArgs::from_env(USAGE, "docs/benchmarks.md", &[], &[])? else {
        return Ok(());
    };
    let (quick, out, tailgate) = (args.quick, args.out, args.tailgate);

    tunnel_bench::install_interrupt_handler();
    let settings = Settings { tailgate, quick };
    let machine = Machine::describe(&settings.tailgate);
    let contenders = tunnel_bench::contenders(&settings.tailgate);
    println!(
        "== tunnel benchmark ({}): {} runs of {} s per figure; contenders: {}",
        if quick { "quick" } else { "full" },
        settings.repeats(),
        settings.seconds(),
        contenders
            .iter()
            .map(|c| c.label.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "   {} × {}, kernel {}, load average {}",
        machine.cores, machine.cpu, machine.kernel, machine.loadavg
    );
    let mut results = Vec::new();
    for c in &contenders {
        if tunnel_bench::interrupted() {
            break;
        }
        println!("== {}", c.label);
        let r = tunnel_bench::measure(c, &settings);
        if let Err(e) = &r.outcome {
            println!("   {} failed: {e}", c.label);
        }
        results.push(r);
    }

    if tunnel_bench::interrupted() {
        bail!("interrupted: namespaces and processes removed, no report written");
    }
    let report = tunnel_bench::render_markdown(&machine, &settings, &results);
    println!("\n{report}");
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, &report).with_context(|| format!("writing {}", out.display()))?;
    println!("== report written to {}", out.display());
    Ok(())
}
