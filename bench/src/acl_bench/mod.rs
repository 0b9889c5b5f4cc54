//! The access-control benchmark behind `cargo xtask bench acl`: what a 1,000-rule tailnet
//! policy costs a subnet router on its XDP fast path, against no policy, measured in one run
//! on one lab; plus an in-process micro-benchmark of the packet filter's classifier.
//!
//! Two sections:
//!
//! 1. [End to end](end_to_end): client → subnet router (XDP fast path) → LAN host, with the
//!    control server's policy switched between no `acls` (filters off) and 1,000 `acls`
//!    entries ([`policy`]) repetition by repetition; iperf3 UDP 64-byte packet rate and TCP
//!    throughput under each, the ratio (with / without) and the goal: a throughput cost of at
//!    most [`GOAL_COST`].
//! 2. [Classifier](micro): `Classifier::accepts` and `PacketFilter::inbound` with 10 to
//!    10,000 rules, and the classifier's build time (no root needed).
//!
//! Everything the benchmark creates (namespaces, processes, XDP programs, temporary files) is
//! removed on drop, also on failure; every wait and loop is bounded. Figures are reported as
//! measured: nothing asserts on a rate.

pub mod end_to_end;
pub mod micro;
pub mod policy;
pub mod report;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::tunnel_bench::Machine;

pub use end_to_end::{Durations, E2eReport, FilterState, RunRecord, Switch};
pub use micro::{MicroReport, MicroRow, MicroSettings};
pub use policy::{GeneratedPolicy, PolicyKind};
pub use report::render_markdown;

/// The goal: the 1,000-rule policy costs at most this fraction of the throughput.
pub const GOAL_COST: f64 = 0.10;

/// How thorough a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 3 repetitions of 5 s per figure; micro-benchmark with 5 batches of 100 ms.
    Full,
    /// 1 repetition of 2 s; shorter micro-benchmark (`--quick`).
    Quick,
}

impl Mode {
    /// Name for logs and the report.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Quick => "quick",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `tailgate` binary the lab runs (built with the eBPF object embedded).
    pub tailgate: PathBuf,
    /// How thorough the run is.
    pub mode: Mode,
    /// End-to-end durations.
    pub e2e: Durations,
    /// Micro-benchmark durations.
    pub micro: MicroSettings,
    /// Rule counts of the micro-benchmark.
    pub sizes: Vec<usize>,
}

impl Settings {
    /// Settings of `mode` with its default durations.
    pub fn new(tailgate: impl Into<PathBuf>, mode: Mode) -> Settings {
        let (e2e, micro) = match mode {
            Mode::Full => (Durations::full(), MicroSettings::full()),
            Mode::Quick => (Durations::quick(), MicroSettings::quick()),
        };
        Settings {
            tailgate: tailgate.into(),
            mode,
            e2e,
            micro,
            sizes: micro::SIZES.to_vec(),
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// The machine and software the run used.
    pub machine: Machine,
    /// The settings of the run.
    pub settings: Settings,
    /// The classifier micro-benchmark, or why it failed.
    pub micro: Result<MicroReport, String>,
    /// The end-to-end part.
    pub e2e: E2eReport,
    /// Wall-clock time of the whole run.
    pub elapsed: Duration,
}

/// Tools the end-to-end part runs.
pub const TOOLS: [&str; 4] = ["ip", "iperf3", "ping", "ss"];

/// The tools of [`TOOLS`] that cannot be started here.
pub fn missing_tools() -> Vec<&'static str> {
    TOOLS
        .iter()
        .copied()
        .filter(|t| {
            let arg = match *t {
                "ss" => "--help",
                "ping" => "-V",
                _ => "--version",
            };
            Command::new(t)
                .arg(arg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
        })
        .collect()
}

/// Runs the micro-benchmark, then the end-to-end part, printing progress.
pub fn run(settings: &Settings) -> Report {
    let start = Instant::now();
    let machine = Machine::describe(&settings.tailgate);
    let d = &settings.e2e;
    println!(
        "== access-control benchmark ({}): end to end {} repetition(s) of {} s per figure and \
         policy; classifier with {:?} rules",
        settings.mode.name(),
        d.repeats,
        d.iperf_seconds,
        settings.sizes
    );
    println!(
        "   {} × {}, kernel {}, load average {}",
        machine.cores, machine.cpu, machine.kernel, machine.loadavg
    );
    println!("== classifier micro-benchmark (in process; section 2 of the report)");
    let micro = micro::measure(&settings.sizes, &settings.micro).map_err(|e| format!("{e:#}"));
    if let Err(e) = &micro {
        println!("   failed: {e}");
    }
    println!(
        "== end to end: client → subnet router (XDP) → LAN host, no policy vs 1,000 acls \
         (section 1)"
    );
    let e2e = end_to_end::measure(&settings.tailgate, d);
    Report {
        machine,
        settings: settings.clone(),
        micro,
        e2e,
        elapsed: start.elapsed(),
    }
}
