//! The MagicDNS benchmark behind `cargo xtask bench dns`: queries per second of tailgate's
//! resolver for tailnet names and for forwarded names, against a dnsmasq forwarder configured
//! the same way, measured with `dnsperf` in one run on one machine.
//!
//! The lab: one tailgate daemon in static mode (a lab host, `--no-xdp`) with a `[dns]` table
//! (hostname `gw`, [`PEERS`] static peers with names, `nameservers` = the upstream), its
//! resolver on `100.100.100.100:53`. A second namespace, joined to the node's by a veth, runs
//! the upstream authority: a dnsmasq that answers every name under [`FORWARDED_ZONE`] itself.
//! The comparison is a dnsmasq in the node's namespace on [`DNSMASQ_ADDR`] that answers the
//! same tailnet names from a hosts file and forwards everything else to the same upstream,
//! with its cache off (`--cache-size=0`): tailgate's resolver does not cache forwarded
//! answers (`gateway/src/dns/forward.rs` sends every query upstream), so a caching dnsmasq
//! would measure its cache instead.
//!
//! `dnsperf` runs in the node's namespace against each resolver with two query files (A and
//! AAAA of the tailnet names; A and AAAA of names under [`FORWARDED_ZONE`]): once as fast as
//! answers come back (queries per second, latency under load, loss, the resolver process's
//! CPU time per query) and once at a light fixed rate (latency). The runs alternate between the
//! resolvers, repetition by repetition, so drifts of a shared machine hit both alike; the
//! report gives medians.
//!
//! Everything the benchmark creates (namespaces, links, processes, files) is removed on drop,
//! also on failure; every wait and loop is bounded. Nothing here asserts on a rate.

pub mod dnsperf;
pub mod report;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::lab::control::TempDir;
use crate::lab::node::peer_spec;
use crate::lab::{veth, wait_for, Keypair, Kind, Lab, Netns, Process};
use crate::tunnel_bench::{self, median, run_bounded, Machine};

pub use dnsperf::{DnsperfRun, Load};
pub use report::render_markdown;

/// Named static peers of the node (`peer01` …).
pub const PEERS: u8 = 20;
/// The node's own name (`[dns] hostname`).
pub const HOSTNAME: &str = "gw";
/// The tailnet domain (tailgate's default in static mode).
pub const DOMAIN: &str = "tailnet.internal";
/// The zone the upstream answers; every name under it is forwarded by both resolvers.
pub const FORWARDED_ZONE: &str = "bench.example";
/// Distinct forwarded names in the query file (`host01.bench.example` …).
pub const FORWARDED_NAMES: usize = 50;
/// The upstream's A answer for every name under [`FORWARDED_ZONE`].
pub const FORWARDED_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
/// The upstream's AAAA answer for every name under [`FORWARDED_ZONE`].
pub const FORWARDED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);
/// tailgate's resolver (the daemon's listen address).
pub const TAILGATE_ADDR: &str = "100.100.100.100";
/// The comparison dnsmasq's listen address in the node's namespace.
pub const DNSMASQ_ADDR: &str = "127.0.0.2";
/// The node's end of the veth to the upstream namespace.
pub const UPLINK_NODE: &str = "10.53.0.1";
/// The upstream dnsmasq's address.
pub const UPSTREAM_ADDR: &str = "10.53.0.2";
/// The veth's name on the node's side.
const UPLINK_IF: &str = "dnsup0";
/// How long a resolver may take to answer its first query after start.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// How thorough a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Medians of 3 runs of 5 s (`cargo xtask bench dns`).
    Full,
    /// One run of 1 s per figure (`--quick`, the smoke test).
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

/// How long and how hard to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct Durations {
    /// Seconds of each run at full load.
    pub load_seconds: f64,
    /// Seconds of each run at the light fixed rate.
    pub light_seconds: f64,
    /// Seconds of the unmeasured run per resolver and query set before the first repetition.
    pub warmup_seconds: f64,
    /// Repetitions; the report gives medians.
    pub repeats: usize,
    /// dnsperf clients (sockets) at full load.
    pub clients: u32,
    /// Queries in flight at most, at full load.
    pub outstanding: u32,
    /// The light fixed rate, queries per second (one client).
    pub light_qps: u32,
}

impl Durations {
    /// The full run: about 1.5 minutes.
    pub fn full() -> Durations {
        Durations {
            load_seconds: 5.0,
            light_seconds: 2.0,
            warmup_seconds: 1.0,
            repeats: 3,
            clients: 4,
            outstanding: 100,
            light_qps: 1000,
        }
    }

    /// `--quick`: about 10 s.
    pub fn quick() -> Durations {
        Durations {
            load_seconds: 1.0,
            light_seconds: 0.5,
            warmup_seconds: 0.3,
            repeats: 1,
            ..Durations::full()
        }
    }

    /// The durations of `mode`.
    pub fn of(mode: Mode) -> Durations {
        match mode {
            Mode::Full => Durations::full(),
            Mode::Quick => Durations::quick(),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `tailgate` binary the lab runs.
    pub tailgate: PathBuf,
    /// How thorough the run is.
    pub mode: Mode,
    /// How long and how hard to measure.
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

/// The resolvers compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// tailgate's MagicDNS resolver in the daemon.
    Tailgate,
    /// dnsmasq as a forwarder with the same names and the same upstream.
    Dnsmasq,
}

impl Resolver {
    /// Both, in report order.
    pub const ALL: [Resolver; 2] = [Resolver::Tailgate, Resolver::Dnsmasq];

    /// Label in tables.
    pub fn label(self) -> &'static str {
        match self {
            Resolver::Tailgate => "tailgate",
            Resolver::Dnsmasq => "dnsmasq",
        }
    }

    /// The address dnsperf queries (port 53).
    pub fn addr(self) -> &'static str {
        match self {
            Resolver::Tailgate => TAILGATE_ADDR,
            Resolver::Dnsmasq => DNSMASQ_ADDR,
        }
    }
}

impl std::fmt::Display for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// The query files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuerySet {
    /// A and AAAA of the node's and its peers' names: answered by the resolver itself.
    Tailnet,
    /// A and AAAA of names under [`FORWARDED_ZONE`]: sent to the upstream every time.
    Forwarded,
}

impl QuerySet {
    /// Both, in report order.
    pub const ALL: [QuerySet; 2] = [QuerySet::Tailnet, QuerySet::Forwarded];

    /// Label in tables.
    pub fn label(self) -> &'static str {
        match self {
            QuerySet::Tailnet => "tailnet names",
            QuerySet::Forwarded => "forwarded names",
        }
    }

    /// The dnsperf query file's lines (`name type`).
    pub fn queries(self) -> Vec<String> {
        let names: Vec<String> = match self {
            QuerySet::Tailnet => tailnet_hosts()
                .into_iter()
                .map(|(name, _)| format!("{name}.{DOMAIN}"))
                .collect(),
            QuerySet::Forwarded => (1..=FORWARDED_NAMES)
                .map(|i| format!("host{i:02}.{FORWARDED_ZONE}"))
                .collect(),
        };
        names
            .iter()
            .flat_map(|n| [format!("{n} A"), format!("{n} AAAA")])
            .collect()
    }

    fn file_name(self) -> &'static str {
        match self {
            QuerySet::Tailnet => "tailnet.queries",
            QuerySet::Forwarded => "forwarded.queries",
        }
    }
}

impl std::fmt::Display for QuerySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// The tailnet's hosts: the node (`gw`, lab host 1) and the peers (`peer01` = lab host 2 …),
/// with their lab host index (tunnel addresses `100.64.0.N`, `fd7a:115c:a1e0::N`).
pub fn tailnet_hosts() -> Vec<(String, u8)> {
    std::iter::once((HOSTNAME.to_string(), 1))
        .chain((1..=PEERS).map(|i| (format!("peer{i:02}"), i + 1)))
        .collect()
}

/// The hosts file the comparison dnsmasq answers the tailnet names from.
pub fn hosts_file() -> String {
    let mut s = String::new();
    for (name, index) in tailnet_hosts() {
        s.push_str(&format!("100.64.0.{index} {name}.{DOMAIN} {name}\n"));
        s.push_str(&format!(
            "fd7a:115c:a1e0::{index:x} {name}.{DOMAIN} {name}\n"
        ));
    }
    s
}

/// One answer checked before the load: both resolvers must give it.
#[derive(Debug, Clone)]
pub struct Check {
    /// The resolver asked.
    pub resolver: Resolver,
    /// `name TYPE`.
    pub question: String,
    /// The expected answer.
    pub want: String,
    /// What `dig +short` said, or why it failed.
    pub got: Result<String, String>,
}

impl Check {
    /// Whether the answer was the expected one.
    pub fn ok(&self) -> bool {
        self.got.as_deref() == Ok(self.want.as_str())
    }
}

/// The questions of the answer checks, with their expected answers.
pub fn check_questions() -> Vec<(String, String)> {
    vec![
        (format!("{HOSTNAME}.{DOMAIN} A"), "100.64.0.1".into()),
        (format!("peer07.{DOMAIN} A"), "100.64.0.8".into()),
        (format!("peer07.{DOMAIN} AAAA"), "fd7a:115c:a1e0::8".into()),
        (
            format!("host07.{FORWARDED_ZONE} A"),
            FORWARDED_V4.to_string(),
        ),
        (
            format!("host07.{FORWARDED_ZONE} AAAA"),
            FORWARDED_V6.to_string(),
        ),
    ]
}

/// The runs of one resolver with one query set.
#[derive(Debug, Clone)]
pub struct Cell {
    /// The resolver.
    pub resolver: Resolver,
    /// The query set.
    pub set: QuerySet,
    /// Runs at full load, or why they failed.
    pub load: Vec<Result<DnsperfRun, String>>,
    /// Runs at the light fixed rate, or why they failed.
    pub light: Vec<Result<DnsperfRun, String>>,
    /// CPU time of the resolver's process per answered query during each full-load run, µs.
    pub cpu_us_per_query: Vec<f64>,
}

impl Cell {
    fn new(resolver: Resolver, set: QuerySet) -> Cell {
        Cell {
            resolver,
            set,
            load: Vec::new(),
            light: Vec::new(),
            cpu_us_per_query: Vec::new(),
        }
    }

    fn ok_load(&self) -> impl Iterator<Item = &DnsperfRun> {
        self.load.iter().filter_map(|r| r.as_ref().ok())
    }

    fn ok_light(&self) -> impl Iterator<Item = &DnsperfRun> {
        self.light.iter().filter_map(|r| r.as_ref().ok())
    }

    /// Median answered queries per second at full load.
    pub fn qps(&self) -> Option<f64> {
        median(&self.ok_load().map(|r| r.qps).collect::<Vec<_>>())
    }

    /// Median of the mean latency at full load, ms.
    pub fn load_latency_ms(&self) -> Option<f64> {
        median(
            &self
                .ok_load()
                .map(|r| r.avg_latency_s * 1e3)
                .collect::<Vec<_>>(),
        )
    }

    /// Median share of lost queries at full load, percent.
    pub fn lost_pct(&self) -> Option<f64> {
        median(&self.ok_load().map(|r| r.lost_pct()).collect::<Vec<_>>())
    }

    /// NOERROR answers in percent of all answered queries, over every run of the cell.
    pub fn noerror_pct(&self) -> Option<f64> {
        let (ok, all) = self
            .ok_load()
            .chain(self.ok_light())
            .fold((0u64, 0u64), |(o, a), r| (o + r.noerror, a + r.completed));
        (all > 0).then(|| ok as f64 * 100.0 / all as f64)
    }

    /// Median of the mean latency at the light fixed rate, µs.
    pub fn light_latency_us(&self) -> Option<f64> {
        median(
            &self
                .ok_light()
                .map(|r| r.avg_latency_s * 1e6)
                .collect::<Vec<_>>(),
        )
    }

    /// Median of the light runs' largest latency, µs.
    pub fn light_max_latency_us(&self) -> Option<f64> {
        median(
            &self
                .ok_light()
                .map(|r| r.max_latency_s * 1e6)
                .collect::<Vec<_>>(),
        )
    }

    /// Median CPU time of the resolver's process per answered query at full load, µs.
    pub fn cpu_us(&self) -> Option<f64> {
        median(&self.cpu_us_per_query)
    }

    /// Why runs failed.
    pub fn failures(&self) -> Vec<String> {
        self.load
            .iter()
            .chain(&self.light)
            .filter_map(|r| r.as_ref().err().cloned())
            .collect()
    }
}

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// The machine and software the run used.
    pub machine: Machine,
    /// `dnsperf`'s version.
    pub dnsperf: String,
    /// `dnsmasq`'s version.
    pub dnsmasq: String,
    /// The settings of the run.
    pub settings: Settings,
    /// Why the lab could not be built, if it could not.
    pub setup_error: Option<String>,
    /// The answers checked before the load.
    pub checks: Vec<Check>,
    /// One cell per query set and resolver, in [`QuerySet::ALL`] × [`Resolver::ALL`] order.
    pub cells: Vec<Cell>,
    /// tailgate's resolver counters after the run (`tailgate dns status --json`, `stats`).
    pub tailgate_stats: Result<serde_json::Value, String>,
    /// Wall-clock time of the whole run.
    pub elapsed: Duration,
}

impl Report {
    /// The cell of `resolver` with `set`.
    pub fn cell(&self, resolver: Resolver, set: QuerySet) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.resolver == resolver && c.set == set)
    }

    /// tailgate / dnsmasq of a figure of `set`.
    pub fn ratio(&self, set: QuerySet, figure: impl Fn(&Cell) -> Option<f64>) -> Option<f64> {
        let t = self.cell(Resolver::Tailgate, set).and_then(&figure)?;
        let d = self.cell(Resolver::Dnsmasq, set).and_then(&figure)?;
        (d > 0.0 && t.is_finite()).then(|| t / d)
    }

    /// Every figure without a number and every failed check, by name (empty when complete).
    pub fn missing_figures(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if let Some(e) = &self.setup_error {
            missing.push(format!("lab: {e}"));
        }
        for c in self.checks.iter().filter(|c| !c.ok()) {
            missing.push(format!(
                "check {} {}: want {}, got {:?}",
                c.resolver, c.question, c.want, c.got
            ));
        }
        for set in QuerySet::ALL {
            for resolver in Resolver::ALL {
                let Some(c) = self.cell(resolver, set) else {
                    missing.push(format!("{resolver}, {set}: not run"));
                    continue;
                };
                let figures = [
                    ("queries/s", c.qps()),
                    ("latency under load", c.load_latency_ms()),
                    ("lost %", c.lost_pct()),
                    ("NOERROR %", c.noerror_pct()),
                    ("latency at the light rate", c.light_latency_us()),
                    ("CPU per query", c.cpu_us()),
                ];
                for (name, v) in figures {
                    if !v.is_some_and(f64::is_finite) {
                        missing.push(format!("{resolver}, {set}: {name}"));
                    }
                }
                for f in c.failures() {
                    missing.push(format!("{resolver}, {set}: {}", one_line(&f, 300)));
                }
            }
        }
        missing
    }
}

/// Tools the benchmark runs; [`missing_tools`] checks them.
pub const TOOLS: [&str; 5] = ["ip", "wg", "dig", "dnsperf", "dnsmasq"];

/// The tools of [`TOOLS`] that cannot be started here.
pub fn missing_tools() -> Vec<&'static str> {
    TOOLS
        .iter()
        .copied()
        .filter(|t| {
            let arg = match *t {
                "wg" => "--help",
                "dnsperf" => "-h",
                "dig" => "-v",
                _ => "--version",
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

/// The namespaces and processes of one run. Field order is drop order: the dnsmasq processes
/// stop first, then the upstream namespace goes, then the lab (the tailgate node, then its
/// namespaces), then the files.
struct DnsLab {
    forwarder: Process,
    upstream: Process,
    /// Kept for its drop: the upstream namespace goes after its dnsmasq.
    _upstream_ns: Netns,
    lab: Lab,
    dir: TempDir,
}

/// Starts dnsmasq in `ns` on `listen:53` with `extra` arguments; returned once it answers
/// `probe` (`name TYPE`) with `want`.
fn start_dnsmasq(
    ns: &Netns,
    what: &str,
    listen: &str,
    extra: &[String],
    probe: &str,
    want: &str,
) -> Result<Process> {
    let mut cmd = ns.command("dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        &format!("--listen-address={listen}"),
        "--port=53",
        "--pid-file=",
        "--user=root",
        "--log-facility=-",
    ])
    .args(extra);
    let mut p = Process::spawn(what, cmd)?;
    p.discard_log_on_drop();
    wait_for(
        &format!("{what} to answer"),
        READY_TIMEOUT,
        || -> Result<Option<()>> {
            p.check_running()?;
            Ok((dig(ns, listen, probe).ok().as_deref() == Some(want)).then_some(()))
        },
    )?;
    Ok(p)
}

/// `dig @server +short QUESTION` in `ns` (one try of 1 s): the answers, sorted, joined by
/// spaces.
fn dig(ns: &Netns, server: &str, question: &str) -> Result<String> {
    let mut cmd = ns.command("dig");
    cmd.arg(format!("@{server}"))
        .args(["+short", "+time=1", "+tries=1"])
        .args(question.split_whitespace());
    let out = run_bounded(&mut cmd, Duration::from_secs(5))?;
    if !out.status.success() {
        return Err(anyhow!(
            "dig {question} failed ({}): {}{}",
            out.status,
            out.stderr.trim(),
            out.stdout.trim()
        ));
    }
    let mut lines: Vec<&str> = out.stdout.lines().map(str::trim).collect();
    lines.retain(|l| !l.is_empty());
    lines.sort_unstable();
    Ok(lines.join(" "))
}

impl DnsLab {
    /// Builds the lab and waits until both resolvers answer.
    fn start(tailgate: &Path) -> Result<DnsLab> {
        let dir = TempDir::new("tgdns")?;
        std::fs::write(dir.0.join("hosts"), hosts_file())?;
        for set in QuerySet::ALL {
            let mut text = set.queries().join("\n");
            text.push('\n');
            std::fs::write(dir.0.join(set.file_name()), text)?;
        }

        let mut lab = Lab::new()?;
        let mut peers = Vec::new();
        for (name, index) in tailnet_hosts().into_iter().skip(1) {
            let keys = Keypair::generate()?;
            let mut p = peer_spec(&keys, index, None);
            p.extra_toml = format!("name = \"{name}\"\n");
            peers.push(p);
        }
        let dns_toml = format!(
            "\n[dns]\nhostname = \"{HOSTNAME}\"\ndomain = \"{DOMAIN}\"\n\
             nameservers = [\"{UPSTREAM_ADDR}\"]\n"
        );
        let kind = Kind::Tailgate {
            bin: tailgate.to_path_buf(),
            args: vec!["--no-xdp".into()],
        };
        lab.start_with(kind, 1, Keypair::generate()?, &peers, &dns_toml)
            .context("starting the tailgate node")?;

        let upstream_ns = Netns::new("tgdup")?;
        let node_ns = &lab.nodes[0].host.ns;
        veth(
            node_ns,
            UPLINK_IF,
            &[&format!("{UPLINK_NODE}/24")],
            &upstream_ns,
            "eth0",
            &[&format!("{UPSTREAM_ADDR}/24")],
        )?;
        let probe = format!("host01.{FORWARDED_ZONE} A");
        let upstream = start_dnsmasq(
            &upstream_ns,
            "dnsmasq-upstream",
            UPSTREAM_ADDR,
            &[
                format!("--address=/{FORWARDED_ZONE}/{FORWARDED_V4}"),
                format!("--address=/{FORWARDED_ZONE}/{FORWARDED_V6}"),
            ],
            &probe,
            &FORWARDED_V4.to_string(),
        )
        .context("starting the upstream dnsmasq")?;
        let forwarder = start_dnsmasq(
            node_ns,
            "dnsmasq-forwarder",
            DNSMASQ_ADDR,
            &[
                format!("--addn-hosts={}", dir.0.join("hosts").display()),
                format!("--local=/{DOMAIN}/"),
                format!("--server={UPSTREAM_ADDR}"),
                "--cache-size=0".into(),
            ],
            &probe,
            &FORWARDED_V4.to_string(),
        )
        .context("starting the comparison dnsmasq")?;
        let mut dns_lab = DnsLab {
            forwarder,
            upstream,
            _upstream_ns: upstream_ns,
            lab,
            dir,
        };
        // The daemon's resolver starts with the daemon; wait for it to forward too.
        let want = FORWARDED_V4.to_string();
        let ready = wait_for(
            "tailgate's resolver to answer",
            READY_TIMEOUT,
            || -> Result<Option<()>> {
                let node = &mut dns_lab.lab.nodes[0];
                node.check_running()?;
                Ok((dig(&node.host.ns, TAILGATE_ADDR, &probe).ok().as_deref()
                    == Some(want.as_str()))
                .then_some(()))
            },
        );
        if let Err(e) = ready {
            return Err(e.context(format!(
                "log of the tailgate node:\n{}",
                dns_lab.lab.nodes[0].log()
            )));
        }
        Ok(dns_lab)
    }

    fn node_ns(&self) -> &Netns {
        &self.lab.nodes[0].host.ns
    }

    fn query_file(&self, set: QuerySet) -> PathBuf {
        self.dir.0.join(set.file_name())
    }

    /// The process id of `resolver`'s process.
    fn pid(&self, resolver: Resolver) -> Option<u32> {
        match resolver {
            Resolver::Tailgate => self.lab.nodes[0].pid(),
            Resolver::Dnsmasq => self.forwarder.pid(),
        }
    }

    /// Fails if `resolver`'s process (or the upstream) has exited.
    fn check_running(&mut self, resolver: Resolver) -> Result<()> {
        self.upstream.check_running()?;
        match resolver {
            Resolver::Tailgate => self.lab.nodes[0].check_running(),
            Resolver::Dnsmasq => self.forwarder.check_running(),
        }
    }

    /// Asks both resolvers the [`check_questions`].
    fn check_answers(&self) -> Vec<Check> {
        let mut checks = Vec::new();
        for resolver in Resolver::ALL {
            for (question, want) in check_questions() {
                let got =
                    dig(self.node_ns(), resolver.addr(), &question).map_err(|e| format!("{e:#}"));
                checks.push(Check {
                    resolver,
                    question,
                    want,
                    got,
                });
            }
        }
        checks
    }

    /// One dnsperf run of `set` against `resolver`; with `cpu`, also the resolver process's
    /// CPU time per answered query (µs).
    fn dnsperf(
        &mut self,
        resolver: Resolver,
        set: QuerySet,
        load: &Load,
        cpu: bool,
    ) -> Result<(DnsperfRun, Option<f64>)> {
        self.check_running(resolver)?;
        let pid = self.pid(resolver);
        let before = pid.and_then(|p| cpu_ticks(p).ok());
        let run = dnsperf::run(self.node_ns(), &self.query_file(set), load)?;
        let after = pid.and_then(|p| cpu_ticks(p).ok());
        self.check_running(resolver)?;
        let per_query = match (cpu, before, after) {
            (true, Some(b), Some(a)) if run.completed > 0 => {
                Some(a.saturating_sub(b) as f64 * 1e6 / ticks_per_second() / run.completed as f64)
            }
            _ => None,
        };
        Ok((run, per_query))
    }

    /// `tailgate dns status --json` of the node: its `stats` object.
    fn tailgate_stats(&self, tailgate: &Path) -> Result<serde_json::Value> {
        let sock = self.lab.nodes[0]
            .control_socket
            .clone()
            .ok_or_else(|| anyhow!("the node has no control socket"))?;
        let mut cmd = Command::new(tailgate);
        cmd.arg("--socket")
            .arg(&sock)
            .args(["dns", "status", "--json"]);
        let out = run_bounded(&mut cmd, Duration::from_secs(10))?;
        if !out.status.success() {
            return Err(anyhow!(
                "tailgate dns status failed ({}): {}",
                out.status,
                out.stderr.trim()
            ));
        }
        let v: serde_json::Value =
            serde_json::from_str(&out.stdout).context("reading tailgate dns status --json")?;
        Ok(v.get("stats").cloned().unwrap_or(v))
    }
}

/// utime + stime of process `pid`, in clock ticks (`/proc/PID/stat`).
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat)
}

/// utime + stime from the text of `/proc/PID/stat`.
pub fn parse_cpu_ticks(stat: &str) -> Result<u64> {
    // The command name (field 2) may contain spaces and parentheses: fields are counted after
    // the last ')'. utime and stime are fields 14 and 15, i.e. 12th and 13th after it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("no ')' in /proc/PID/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no field {} in /proc/PID/stat", i + 3))
    };
    Ok(num(11)? + num(12)?)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions and only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// `dnsmasq --version`'s first line, or why it is not known.
pub fn dnsmasq_version() -> String {
    match run_bounded(
        Command::new("dnsmasq").arg("--version"),
        Duration::from_secs(10),
    ) {
        Ok(out) => out
            .stdout
            .lines()
            .next()
            .map(|l| l.split("Copyright").next().unwrap_or(l).trim().to_string())
            .unwrap_or_else(|| "unknown".into()),
        Err(e) => format!("not found ({e})"),
    }
}

/// Whether the run should stop (SIGINT/SIGTERM).
fn interrupted() -> bool {
    tunnel_bench::interrupted()
}

pub(crate) use crate::tunnel_bench::one_line;

/// Builds the lab, checks both resolvers' answers, then measures; prints progress. A failure
/// becomes an error in the report (a run that fails does not stop the others). Stops between
/// runs once SIGINT/SIGTERM arrived (see [`tunnel_bench::install_interrupt_handler`]).
pub fn run(settings: &Settings) -> Report {
    let start = Instant::now();
    let d = &settings.durations;
    let mut report = Report {
        machine: Machine::describe(&settings.tailgate),
        dnsperf: dnsperf::version(),
        dnsmasq: dnsmasq_version(),
        settings: settings.clone(),
        setup_error: None,
        checks: Vec::new(),
        cells: QuerySet::ALL
            .iter()
            .flat_map(|&s| Resolver::ALL.iter().map(move |&r| Cell::new(r, s)))
            .collect(),
        tailgate_stats: Err("not run".into()),
        elapsed: Duration::ZERO,
    };
    println!(
        "== MagicDNS benchmark ({}): {} run(s) of {} s at full load and {} s at {} queries/s \
         per resolver and query set",
        settings.mode.name(),
        d.repeats,
        d.load_seconds,
        d.light_seconds,
        d.light_qps
    );
    println!(
        "   {} × {}, kernel {}, load average {}; {}, {}",
        report.machine.cores,
        report.machine.cpu,
        report.machine.kernel,
        report.machine.loadavg,
        report.dnsperf,
        report.dnsmasq
    );
    let mut lab = match DnsLab::start(&settings.tailgate) {
        Ok(lab) => lab,
        Err(e) => {
            println!("   the lab could not be built: {e:#}");
            report.setup_error = Some(format!("{e:#}"));
            report.elapsed = start.elapsed();
            return report;
        }
    };
    report.checks = lab.check_answers();
    for c in &report.checks {
        if !c.ok() {
            println!(
                "   check {} {}: want {}, got {:?}",
                c.resolver, c.question, c.want, c.got
            );
        }
    }
    println!(
        "   answers checked: {} of {} as expected",
        report.checks.iter().filter(|c| c.ok()).count(),
        report.checks.len()
    );
    let load = |resolver: Resolver, seconds: f64| Load {
        server: resolver.addr().into(),
        seconds,
        clients: d.clients,
        outstanding: d.outstanding,
        max_qps: None,
    };
    let light = |resolver: Resolver| Load {
        server: resolver.addr().into(),
        seconds: d.light_seconds,
        clients: 1,
        outstanding: d.outstanding,
        max_qps: Some(d.light_qps),
    };
    if d.warmup_seconds > 0.0 {
        for set in QuerySet::ALL {
            for resolver in Resolver::ALL {
                if let Err(e) = lab.dnsperf(resolver, set, &load(resolver, d.warmup_seconds), false)
                {
                    println!("   warm-up {resolver}, {set}: {e:#}");
                }
            }
        }
    }
    'runs: for rep in 0..d.repeats {
        for set in QuerySet::ALL {
            let order = if rep % 2 == 0 {
                Resolver::ALL
            } else {
                [Resolver::Dnsmasq, Resolver::Tailgate]
            };
            for resolver in order {
                if interrupted() {
                    break 'runs;
                }
                let full = lab.dnsperf(resolver, set, &load(resolver, d.load_seconds), true);
                let slow = lab.dnsperf(resolver, set, &light(resolver), false);
                let Some(cell) = report
                    .cells
                    .iter_mut()
                    .find(|c| c.resolver == resolver && c.set == set)
                else {
                    continue;
                };
                let mut line = format!("   #{} {resolver:>8}, {set:<15}:", rep + 1);
                match full {
                    Ok((r, cpu)) => {
                        line.push_str(&format!(
                            " {:>8.0} q/s, {:.2} ms, lost {:.2} %, NOERROR {:.1} %",
                            r.qps,
                            r.avg_latency_s * 1e3,
                            r.lost_pct(),
                            r.noerror_pct()
                        ));
                        if let Some(c) = cpu {
                            line.push_str(&format!(", {c:.1} µs CPU/query"));
                            cell.cpu_us_per_query.push(c);
                        }
                        cell.load.push(Ok(r));
                    }
                    Err(e) => {
                        line.push_str(&format!(" FAILED: {}", one_line(&format!("{e:#}"), 300)));
                        cell.load.push(Err(format!("{e:#}")));
                    }
                }
                match slow {
                    Ok((r, _)) => {
                        line.push_str(&format!(
                            "; at {} q/s: {:.0} µs",
                            d.light_qps,
                            r.avg_latency_s * 1e6
                        ));
                        cell.light.push(Ok(r));
                    }
                    Err(e) => {
                        line.push_str(&format!(
                            "; light load FAILED: {}",
                            one_line(&format!("{e:#}"), 300)
                        ));
                        cell.light.push(Err(format!("{e:#}")));
                    }
                }
                println!("{line}");
            }
        }
    }
    report.tailgate_stats = lab
        .tailgate_stats(&settings.tailgate)
        .map_err(|e| format!("{e:#}"));
    drop(lab);
    report.elapsed = start.elapsed();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_files_and_hosts_match() {
        let tailnet = QuerySet::Tailnet.queries();
        assert_eq!(tailnet.len(), 2 * (usize::from(PEERS) + 1));
        assert!(tailnet.contains(&"gw.tailnet.internal A".to_string()));
        assert!(tailnet.contains(&"peer20.tailnet.internal AAAA".to_string()));
        let forwarded = QuerySet::Forwarded.queries();
        assert_eq!(forwarded.len(), 2 * FORWARDED_NAMES);
        assert!(forwarded
            .iter()
            .all(|q| q.contains(&format!(".{FORWARDED_ZONE} "))));
        let hosts = hosts_file();
        assert!(hosts.contains("100.64.0.8 peer07.tailnet.internal peer07\n"));
        assert!(hosts.contains("fd7a:115c:a1e0::15 peer20.tailnet.internal peer20\n"));
        for (q, want) in check_questions() {
            let name = q.split_whitespace().next().unwrap_or_default();
            if name.ends_with(DOMAIN) {
                assert!(hosts.contains(&format!("{want} {name} ")), "{q}");
            }
        }
    }

    #[test]
    fn cpu_ticks_of_a_stat_line() {
        let stat = "1234 (tokio (x) y) S 1 2 3 4 5 6 7 8 9 10 250 40 0 0 20 0 1 0";
        assert_eq!(parse_cpu_ticks(stat).unwrap(), 290);
        assert!(parse_cpu_ticks("1234 (x) S 1").is_err());
        assert!(parse_cpu_ticks("garbage").is_err());
        // This process's own line reads.
        assert!(cpu_ticks(std::process::id()).is_ok());
    }

    #[test]
    fn durations_shrink_with_the_mode() {
        let (f, q) = (Durations::full(), Durations::quick());
        assert!(f.load_seconds > q.load_seconds && f.repeats > q.repeats);
        assert_eq!(Settings::new("/x", Mode::Quick).durations, q);
        // The full run stays around 1.5 minutes: 2 resolvers × 2 query sets per repetition.
        let full = 4.0 * (f.warmup_seconds + f.repeats as f64 * (f.load_seconds + f.light_seconds));
        assert!(full <= 100.0, "{full}");
    }

    #[test]
    fn ratios_and_missing_figures() {
        let run = |qps: f64| DnsperfRun {
            sent: 100,
            completed: 100,
            lost: 0,
            noerror: 100,
            rcodes: vec![("NOERROR".into(), 100)],
            run_time_s: 1.0,
            qps,
            avg_latency_s: 0.001,
            min_latency_s: 0.0001,
            max_latency_s: 0.002,
            latency_stddev_s: 0.0001,
        };
        let cell = |resolver, set, qps| Cell {
            resolver,
            set,
            load: vec![Ok(run(qps))],
            light: vec![Ok(run(1000.0))],
            cpu_us_per_query: vec![5.0],
        };
        let mut r = Report {
            machine: Machine {
                cpu: "cpu".into(),
                cores: 2,
                kernel: "6".into(),
                date: "today".into(),
                commit: "abc".into(),
                wireguard_go: String::new(),
                boringtun: String::new(),
                iperf3: String::new(),
                loadavg: "0 0 0".into(),
            },
            dnsperf: "dnsperf".into(),
            dnsmasq: "dnsmasq".into(),
            settings: Settings::new("/x", Mode::Quick),
            setup_error: None,
            checks: Vec::new(),
            cells: vec![
                cell(Resolver::Tailgate, QuerySet::Tailnet, 150.0),
                cell(Resolver::Dnsmasq, QuerySet::Tailnet, 100.0),
                cell(Resolver::Tailgate, QuerySet::Forwarded, 50.0),
                cell(Resolver::Dnsmasq, QuerySet::Forwarded, 100.0),
            ],
            tailgate_stats: Err("not run".into()),
            elapsed: Duration::from_secs(1),
        };
        assert_eq!(r.ratio(QuerySet::Tailnet, Cell::qps), Some(1.5));
        assert_eq!(r.ratio(QuerySet::Forwarded, Cell::qps), Some(0.5));
        assert!(r.missing_figures().is_empty(), "{:?}", r.missing_figures());
        r.cells[3].load = vec![Err("boom".into())];
        let m = r.missing_figures();
        assert!(m.iter().any(|m| m.contains("boom")), "{m:?}");
        assert_eq!(r.ratio(QuerySet::Forwarded, Cell::qps), None);
        let md = render_markdown(&r);
        assert!(
            md.contains("| tailnet names, queries/s | 150 | 100 | 1.50× |"),
            "{md}"
        );
    }
}
