//! The forwarding benchmark behind `cargo xtask bench forward`: a subnet router's XDP fast
//! path (`tun_forward` + `lan_return`) against its nftables fallback (kernel forwarding and
//! masquerade, the daemon started with `--no-xdp`), measured in one run on one machine, plus
//! the longest-prefix-match tables at full-table scale.
//!
//! Three sections:
//!
//! 1. [End to end](end_to_end): a tailgate client → a tailgate subnet router → a LAN host,
//!    once with each forwarding path (XDP as by default, XDP with `--xdp generic`, nftables);
//!    iperf3 TCP (one stream, both directions) and 64-byte UDP packet rates (both
//!    directions). The labs exist side by side and the runs alternate between them, so slow
//!    drifts of a shared machine hit every path alike. The router's XDP counters before and
//!    after every run show what XDP itself forwarded.
//! 2. [Router stage](stage): the router alone, packets written into a TUN device as the daemon
//!    would write them (TUN → LAN), and a LAN host flooding replies to a SNATed flow
//!    (LAN → TUN): kernel (+ nftables masquerade / conntrack) against the XDP programs.
//! 3. [LPM](lpm): the userspace [`tailgate::route::PrefixTable`] and the BPF LPM trie of
//!    `tun_forward` with up to 1,000,000 random IPv4 prefixes: insert, update and lookup cost.
//!
//! Everything the benchmark creates (namespaces, links, TUN devices, processes, BPF programs
//! and maps) is removed on drop, also on failure; every wait and loop is bounded. Figures are
//! reported as measured: nothing here asserts on a rate.

pub mod end_to_end;
pub mod flood;
pub mod lpm;
pub mod report;
pub mod stage;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::tunnel_bench::{self, Machine};

pub use end_to_end::{E2eTest, PathFigures, PathResult, RouterPath, XdpDelta};
pub use lpm::{BpfLpm, LpmReport, UserspaceLpm};
pub use report::render_markdown;
pub use stage::{ForwardVariant, ReturnVariant, StageReport, StageRow};

/// How thorough a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Medians of 3 runs of 5 s, 1,000,000 prefixes (`cargo xtask bench forward`).
    Full,
    /// One short run per figure (`--quick`).
    Quick,
    /// The shortest run that still produces every figure (the CI smoke test).
    Smoke,
}

impl Mode {
    /// Name for logs and the report.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Quick => "quick",
            Mode::Smoke => "smoke",
        }
    }
}

/// How long and how much to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durations {
    /// Seconds of each iperf3 run.
    pub iperf_seconds: u32,
    /// iperf3 runs per end-to-end figure; the report gives their median.
    pub repeats: usize,
    /// How long each router-stage figure is measured.
    pub stage: Duration,
    /// Runs per router-stage figure (each in fresh namespaces); the report gives the median.
    pub stage_repeats: usize,
    /// Random IPv4 prefixes in the LPM tables.
    pub prefixes: usize,
    /// Random-address lookups in the userspace table.
    pub lookups: usize,
    /// Prefixes removed and inserted again on the full tables (updates).
    pub updates: usize,
    /// `BPF_PROG_TEST_RUN` repetitions per timing of `tun_forward`.
    pub test_run_repeat: u32,
}

impl Durations {
    /// The full run: about 4–5 minutes on two cores.
    pub fn full() -> Durations {
        Durations {
            iperf_seconds: 5,
            repeats: 3,
            stage: Duration::from_secs(2),
            stage_repeats: 3,
            prefixes: 1_000_000,
            lookups: 2_000_000,
            updates: 10_000,
            test_run_repeat: 1_000_000,
        }
    }

    /// `--quick`: one run of 2 s per end-to-end figure, 1 s per stage figure, and still
    /// 1,000,000 prefixes (the inserts take a few seconds).
    pub fn quick() -> Durations {
        Durations {
            iperf_seconds: 2,
            repeats: 1,
            stage: Duration::from_secs(1),
            stage_repeats: 1,
            prefixes: 1_000_000,
            lookups: 1_000_000,
            updates: 10_000,
            test_run_repeat: 200_000,
        }
    }

    /// The smoke test: every figure once, as short as possible (10,000 prefixes).
    pub fn smoke() -> Durations {
        Durations {
            iperf_seconds: 1,
            repeats: 1,
            stage: Duration::from_millis(300),
            stage_repeats: 1,
            prefixes: 10_000,
            lookups: 100_000,
            updates: 1_000,
            test_run_repeat: 10_000,
        }
    }

    /// The durations of `mode`.
    pub fn of(mode: Mode) -> Durations {
        match mode {
            Mode::Full => Durations::full(),
            Mode::Quick => Durations::quick(),
            Mode::Smoke => Durations::smoke(),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `tailgate` binary the labs run (built with the eBPF object embedded).
    pub tailgate: PathBuf,
    /// How thorough the run is (for the report's wording).
    pub mode: Mode,
    /// How long and how much to measure.
    pub durations: Durations,
}

impl Settings {
    /// Settings of `mode` with its default durations.
    pub fn new(tailgate: impl Into<PathBuf>, mode: Mode) -> Settings {
        Settings {
            tailgate: tailgate.into(),
            mode,
            durations: Durations::of(mode),
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
    /// End to end, one entry per path, in [`RouterPath::ALL`] order.
    pub end_to_end: Vec<PathResult>,
    /// Router stage: TUN → LAN.
    pub stage_forward: StageReport<ForwardVariant>,
    /// Router stage: LAN → TUN.
    pub stage_return: StageReport<ReturnVariant>,
    /// Longest-prefix-match tables.
    pub lpm: LpmReport,
    /// Wall-clock time of the whole run.
    pub elapsed: Duration,
}

/// Tools the benchmark runs; [`missing_tools`] checks them.
pub const TOOLS: [&str; 6] = ["ip", "nft", "iperf3", "wg", "ethtool", "ss"];

/// The tools of [`TOOLS`] that cannot be started here.
pub fn missing_tools() -> Vec<&'static str> {
    TOOLS
        .iter()
        .copied()
        .filter(|t| {
            let arg = if *t == "wg" || *t == "ss" {
                "--help"
            } else {
                "--version"
            };
            Command::new(t)
                .arg(arg)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_err()
        })
        .collect()
}

/// Runs the three sections in order, printing progress; a section that fails becomes an
/// error in its part of the report (the others still run). Stops between measurements once
/// SIGINT/SIGTERM arrived (see [`tunnel_bench::install_interrupt_handler`]).
pub fn run(settings: &Settings) -> Report {
    let start = Instant::now();
    let machine = Machine::describe(&settings.tailgate);
    let d = &settings.durations;
    println!(
        "== forwarding benchmark ({}): end to end {} run(s) of {} s per figure, router stage \
         {} run(s) of {:.1} s, LPM with {} prefixes",
        settings.mode.name(),
        d.repeats,
        d.iperf_seconds,
        d.stage_repeats,
        d.stage.as_secs_f64(),
        d.prefixes
    );
    println!(
        "   {} × {}, kernel {}, load average {}",
        machine.cores, machine.cpu, machine.kernel, machine.loadavg
    );
    println!(
        "== 1. end to end: client → router → LAN host; XDP (--xdp auto), XDP (--xdp generic) \
         and nftables paths"
    );
    let end_to_end = end_to_end::measure(&settings.tailgate, d);
    println!("== 2. router stage: TUN → LAN");
    let stage_forward = stage::forward_tun_to_lan(d);
    println!("== 2. router stage: LAN → TUN");
    let stage_return = stage::return_lan_to_tun(d);
    println!("== 3. longest-prefix match with {} prefixes", d.prefixes);
    let lpm = lpm::measure(d);
    Report {
        machine,
        settings: settings.clone(),
        end_to_end,
        stage_forward,
        stage_return,
        lpm,
        elapsed: start.elapsed(),
    }
}

/// Whether the run should stop (SIGINT/SIGTERM).
pub(crate) fn interrupted() -> bool {
    tunnel_bench::interrupted()
}

pub(crate) use crate::tunnel_bench::one_line;

/// A small deterministic pseudo-random generator (SplitMix64): the same seed gives the same
/// prefixes and addresses on every machine.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The next 32 pseudo-random bits.
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// A value in `0..n` (`n` > 0; slightly biased, which does not matter here).
    pub fn below(&mut self, n: u32) -> u32 {
        ((u64::from(self.next_u32()) * u64::from(n.max(1))) >> 32) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_deterministic() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut c = SplitMix64::new(1);
        assert!((0..1000).all(|_| c.below(25) < 25));
    }

    #[test]
    fn durations_shrink_with_the_mode() {
        let (f, q, s) = (Durations::full(), Durations::quick(), Durations::smoke());
        assert!(f.iperf_seconds > q.iperf_seconds && q.iperf_seconds >= s.iperf_seconds);
        assert_eq!(f.prefixes, 1_000_000);
        assert!(s.prefixes < q.prefixes);
        assert_eq!(Settings::new("/x", Mode::Quick).durations, q);
    }

    #[test]
    fn one_line_escapes() {
        assert_eq!(one_line("a |\n b", 100), "a \\| b");
        assert_eq!(one_line("abcdef", 3), "abc…");
    }
}
