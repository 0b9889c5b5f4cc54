//! The HA failover benchmark: two tailgate routers for one prefix behind a `tailgate control`
//! server, a client pinging a LAN host every 10 ms, and the primary failing in three ways
//! (kill -9, WAN link down, LAN health probe failing). Each trial builds a fresh lab; the
//! figure is the longest gap between ping replies. Prints a Markdown table (median and worst
//! per failure kind, against the goal: worst ≤ 1000 ms, median ≤ 500 ms) and writes it to a
//! file.
//!
//! Usage: `tailgate-bench-failover [--trials N] [--quick] [--out PATH] PATH/TO/tailgate` (as
//! root; `cargo xtask bench failover` builds tailgate and runs this).

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{anyhow, Result};
use tailgate_bench::args::BenchArgs;
use tailgate_bench::lab::control::{ha_failover_trial, Failure};

const USAGE: &str =
    "usage: tailgate-bench-failover [--trials N] [--quick] [--out PATH] PATH/TO/tailgate";
/// Trials per failure kind by default.
const TRIALS: usize = 20;
/// Trials per failure kind with `--quick`.
const QUICK_TRIALS: usize = 3;

/// What one failure kind measured.
struct Row {
    failure: Failure,
    /// Longest reply gap of each successful trial, ms.
    gaps_ms: Vec<f64>,
    /// Trials that failed, with why.
    failed: Vec<String>,
}

impl Row {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.gaps_ms.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    fn median(&self) -> Option<f64> {
        let v = self.sorted();
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }

    fn worst(&self) -> Option<f64> {
        self.sorted().last().copied()
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.0}"))
}

fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| failure | trials ok | median gap ms | worst gap ms | all gaps ms (sorted) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    for r in rows {
        let all: Vec<String> = r.sorted().iter().map(|g| format!("{g:.0}")).collect();
        let _ = writeln!(
            s,
            "| {} | {}/{} | {} | {} | {} |",
            r.failure.label(),
            r.gaps_ms.len(),
            r.gaps_ms.len() + r.failed.len(),
            fmt_ms(r.median()),
            fmt_ms(r.worst()),
            all.join(" ")
        );
    }
    s
}

fn main() -> Result<()> {
    let Some(args) = BenchArgs::from_env(USAGE, "docs/benchmarks-failover.md", &[], &["--trials"])?
    else {
        return Ok(());
    };
    let trials = match args.value("--trials") {
        Some(n) => n
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| anyhow!("--trials needs a positive number, not {n:?}"))?,
        None if args.quick => QUICK_TRIALS,
        None => TRIALS,
    };
    let (out, tailgate) = (args.out, args.tailgate);
    let started = Instant::now();
    println!(
        "== HA failover benchmark: {trials} trial(s) per failure kind, a fresh lab each \
         (client pings every 10 ms; figure = longest gap between replies)"
    );
    let mut rows = Vec::new();
    for failure in Failure::ALL {
        let mut row = Row {
            failure,
            gaps_ms: Vec::new(),
            failed: Vec::new(),
        };
        for i in 1..=trials {
            match ha_failover_trial(&tailgate, failure) {
                Ok(t) if t.replies_after > 100 && t.primary_after.as_deref() == Some("r2") => {
                    println!(
                        "   {} #{i}: longest gap {:.0} ms",
                        failure.label(),
                        t.gap * 1000.0
                    );
                    row.gaps_ms.push(t.gap * 1000.0);
                }
                Ok(t) => {
                    let why = format!(
                        "traffic did not recover ({} replies after, primary afterwards {:?})",
                        t.replies_after, t.primary_after
                    );
                    println!("   {} #{i}: FAILED: {why}", failure.label());
                    row.failed.push(why);
                }
                Err(e) => {
                    println!("   {} #{i}: FAILED: {e:#}", failure.label());
                    row.failed.push(format!("{e:#}"));
                }
            }
        }
        rows.push(row);
    }
    let t = table(&rows);
    println!("\n{t}");
    let mut doc = String::from(
        "# HA failover benchmark\n\n\
         `cargo xtask bench failover`: two tailgate routers advertise 10.0.50.0/24 to a \
         `tailgate control serve` server (r1 with `--route-priority 10` is primary, r2 standby, \
         both probing a LAN host as their LAN health check); a client with `--accept-routes` \
         pings a LAN host behind them every 10 ms. After 2 s the primary fails; the figure is \
         the longest gap between ping replies. Every trial builds a fresh lab of network \
         namespaces.\n\n\
         * **kill -9**: the server sees the session drop and moves the route at once.\n\
         * **WAN link down**: the client's probes through the tunnel (every 50 ms) find the \
         primary silent after 300 ms and switch to the standby before the server notices.\n\
         * **LAN probe fails**: the LAN host stops answering; the router's health probe \
         (every 50 ms) reports the LAN unhealthy after 300 ms and the server moves the \
         route.\n\n\
         Goal: worst ≤ 1000 ms, median ≤ 500 ms.\n\n",
    );
    doc.push_str(&t);
    let failures: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            r.failed
                .iter()
                .map(move |f| format!("- {}: {f}", r.failure.label()))
        })
        .collect();
    if !failures.is_empty() {
        doc.push_str("\nFailed trials:\n\n");
        doc.push_str(&failures.join("\n"));
        doc.push('\n');
    }
    let _ = writeln!(
        doc,
        "\n{trials} trial(s) per kind; run took {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    std::fs::write(&out, doc).map_err(|e| anyhow!("writing {}: {e}", out.display()))?;
    println!("written to {}", out.display());
    Ok(())
}
