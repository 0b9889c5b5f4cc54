//! The tunnel benchmark behind `cargo xtask bench tunnel`: tailgate against plain veth (the
//! ceiling), wireguard-go and boringtun-cli, measured in one run on one machine.
//!
//! Every contender gets the same topology: two fresh namespaces joined directly by one veth
//! pair (`10.99.0.1/24` ↔ `10.99.0.2/24` on `eth0`), a tunnel between them with MTU 1280
//! (`100.64.0.1` ↔ `100.64.0.2`), and iperf3 client (side 1) and server (side 2) on its ends.
//! The veth row runs iperf3 on the underlay itself, with the veth MTU set to 1280 so that
//! every row moves packets of the same size.
//!
//! Figures, each the median of several runs: iperf3 TCP with 1 and 4 streams in both
//! directions, UDP packets per second received by the server (`-u -b 0`, 1252-byte payloads:
//! 1280-byte IP packets), whole-machine CPU seconds per GB for the 1-stream forward test (busy
//! jiffies from `/proc/stat`), the outer UDP receive-buffer drops during that test, and the
//! tunnel processes' peak RSS (`VmHWM`). Everything the benchmark creates is removed on drop,
//! also on failure; every wait is bounded.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::lab::node::{peer_spec, LISTEN_PORT};
use crate::lab::{veth, wait_for, Host, Keypair, Kind, Netns, Node};

/// Tunnel MTU for every contender (tailgate's default, DESIGN.md §7).
pub const TUNNEL_MTU: u16 = 1280;
/// UDP payload of the packet-rate test: 1280 − 20 (IPv4) − 8 (UDP), one full tunnel packet.
pub const UDP_PAYLOAD: u16 = TUNNEL_MTU - 28;
/// The tailgate daemon flag that turns TUN/UDP offloads off, when the binary has it.
pub const NO_OFFLOAD_FLAG: &str = "--no-offload";
/// The lab pins XDP to native mode for its tests; the benchmark runs the daemon's default
/// (`auto`), as users get it.
const DEFAULT_XDP_ARGS: &[&str] = &["--xdp", "auto"];

/// Environment variable that overrides tailgate's MTU; the benchmark removes it.
const MTU_ENV: &str = "TS_DEBUG_MTU";
/// Set by SIGINT/SIGTERM once [`install_interrupt_handler`] ran.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set a flag instead of killing the process, so that a run that is
/// interrupted stops between two measurements and removes its namespaces and processes.
pub fn install_interrupt_handler() {
    let handler: extern "C" fn(libc::c_int) = on_interrupt;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
}

/// Whether SIGINT or SIGTERM arrived since [`install_interrupt_handler`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// How long a tunnel may take to pass its first ping (handshake included).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// Extra time an iperf3 client gets beyond its test duration before it is killed.
const IPERF_SLACK: Duration = Duration::from_secs(20);
/// How long small helper commands (`--version`, `--help`, `git`) may run.
const HELPER_TIMEOUT: Duration = Duration::from_secs(10);
/// First iperf3 port; runs rotate through a few so no run waits for an old socket.
const IPERF_PORT: u16 = 5201;

/// How long and how often to measure.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `tailgate` binary under test.
    pub tailgate: PathBuf,
    /// Quick mode: 1 run of 2 s per figure instead of 3 runs of 5 s.
    pub quick: bool,
}

impl Settings {
    /// Seconds each iperf3 run lasts.
    pub fn seconds(&self) -> u32 {
        if self.quick {
            2
        } else {
            5
        }
    }

    /// Runs per figure; the report gives their median.
    pub fn repeats(&self) -> usize {
        if self.quick {
            1
        } else {
            3
        }
    }
}

/// What runs between the two namespaces.
#[derive(Debug, Clone)]
pub enum ContenderKind {
    /// No tunnel: iperf3 straight over the veth (the ceiling).
    Veth,
    /// A WireGuard implementation at both ends.
    Tunnel(Kind),
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Contender {
    /// Row label.
    pub label: String,
    /// What runs.
    pub kind: ContenderKind,
}

/// Label of the default tailgate row; the ratios compare it (and its variants) to the rest.
pub const TAILGATE: &str = "tailgate";
/// Label of the tailgate row with `--no-offload`.
pub const TAILGATE_NO_OFFLOAD: &str = "tailgate (offloads off)";
/// Label of the veth row.
pub const VETH: &str = "veth (no tunnel)";
/// Label of the wireguard-go row.
pub const WIREGUARD_GO: &str = "wireguard-go";
/// Label of the boringtun-cli row.
pub const BORINGTUN: &str = "boringtun-cli";

/// The contenders of one run: veth, wireguard-go, boringtun-cli, tailgate, and
/// "tailgate (offloads off)" when `tailgate daemon --help` mentions `--no-offload`.
pub fn contenders(tailgate: &Path) -> Vec<Contender> {
    let mut list = vec![
        Contender {
            label: VETH.into(),
            kind: ContenderKind::Veth,
        },
        Contender {
            label: WIREGUARD_GO.into(),
            kind: ContenderKind::Tunnel(Kind::WireguardGo),
        },
        Contender {
            label: BORINGTUN.into(),
            kind: ContenderKind::Tunnel(Kind::Boringtun),
        },
        Contender {
            label: TAILGATE.into(),
            kind: ContenderKind::Tunnel(Kind::Tailgate {
                bin: tailgate.to_path_buf(),
                args: DEFAULT_XDP_ARGS.iter().map(|a| a.to_string()).collect(),
            }),
        },
    ];
    if daemon_has_flag(tailgate, NO_OFFLOAD_FLAG) {
        list.push(Contender {
            label: TAILGATE_NO_OFFLOAD.into(),
            kind: ContenderKind::Tunnel(Kind::Tailgate {
                bin: tailgate.to_path_buf(),
                args: [NO_OFFLOAD_FLAG]
                    .iter()
                    .chain(DEFAULT_XDP_ARGS)
                    .map(|a| a.to_string())
                    .collect(),
            }),
        });
    }
    list
}

/// Whether `tailgate daemon --help` mentions `flag`.
pub fn daemon_has_flag(tailgate: &Path, flag: &str) -> bool {
    let mut cmd = Command::new(tailgate);
    cmd.args(["daemon", "--help"]);
    match run_bounded(&mut cmd, HELPER_TIMEOUT) {
        Ok(out) => out.stdout.contains(flag) || out.stderr.contains(flag),
        Err(_) => false,
    }
}

/// One iperf3 test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Test {
    /// TCP with `streams` parallel streams; `reverse` is server → client (`-R`).
    Tcp {
        /// Parallel streams (`-P`).
        streams: u8,
        /// Server sends (`-R`).
        reverse: bool,
    },
    /// UDP at full speed (`-u -b 0`) with [`UDP_PAYLOAD`]-byte datagrams, client → server.
    Udp,
}

/// The tests of each repetition, in order.
pub const TESTS: [Test; 5] = [
    Test::Tcp {
        streams: 1,
        reverse: false,
    },
    Test::Tcp {
        streams: 1,
        reverse: true,
    },
    Test::Tcp {
        streams: 4,
        reverse: false,
    },
    Test::Tcp {
        streams: 4,
        reverse: true,
    },
    Test::Udp,
];

impl Test {
    /// Short name for logs.
    pub fn name(&self) -> String {
        match self {
            Test::Tcp { streams, reverse } => format!(
                "TCP {streams} stream{} {}",
                if *streams == 1 { "" } else { "s" },
                if *reverse { "←" } else { "→" }
            ),
            Test::Udp => format!("UDP {UDP_PAYLOAD} B →"),
        }
    }
}

/// The runs behind one figure.
#[derive(Debug, Clone, Default)]
pub struct Figure {
    /// Values of the runs that succeeded.
    pub runs: Vec<f64>,
    /// Why the other runs failed.
    pub failures: Vec<String>,
}

impl Figure {
    /// The median of the successful runs.
    pub fn median(&self) -> Option<f64> {
        median(&self.runs)
    }

    fn record(&mut self, value: Result<f64, String>) {
        match value {
            Ok(v) => self.runs.push(v),
            Err(e) => self.failures.push(e),
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count), `None` if empty
/// or if a value is NaN.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// The figures of one contender.
#[derive(Debug, Clone, Default)]
pub struct Measurements {
    /// TCP, 1 stream, client → server, Gbit/s.
    pub tcp1_fwd: Figure,
    /// TCP, 1 stream, server → client, Gbit/s.
    pub tcp1_rev: Figure,
    /// TCP, 4 streams, client → server, Gbit/s.
    pub tcp4_fwd: Figure,
    /// TCP, 4 streams, server → client, Gbit/s.
    pub tcp4_rev: Figure,
    /// UDP datagrams per second received by the server.
    pub udp_pps: Figure,
    /// UDP datagrams lost (sent but not received), percent.
    pub udp_loss_pct: Figure,
    /// UDP datagrams the client's interface into the tunnel (the TUN device; `eth0` for veth)
    /// dropped on transmit, percent of those iperf3 sent: with a tunnel, its queue overflowed
    /// because the tunnel process did not read fast enough.
    pub udp_tx_drop_pct: Figure,
    /// Whole-machine busy CPU seconds per GB (10⁹ bytes) received, TCP 1 stream forward.
    pub cpu_s_per_gb: Figure,
    /// TCP retransmits in the 1-stream forward test.
    pub tcp1_retransmits: Figure,
    /// Outer UDP datagrams the receiving namespace dropped for a full receive buffer during
    /// the TCP 1-stream forward test, percent of the datagrams that reached its sockets.
    pub outer_drop_pct: Figure,
    /// Peak RSS (`VmHWM`) of the tunnel processes, KiB, the larger of the two ends.
    pub peak_rss_kib: Option<u64>,
    /// Remarks: data path, XDP mode, MTU, runs that failed.
    pub notes: Vec<String>,
}

/// One row of results.
#[derive(Debug, Clone)]
pub struct ContenderResult {
    /// Row label.
    pub label: String,
    /// The figures, or why the contender could not be measured.
    pub outcome: Result<Measurements, String>,
}

/// The two namespaces of one contender and what runs in them; stopped and removed on drop.
enum Topology {
    /// iperf3 over the bare veth.
    Veth { a: Netns, b: Netns },
    /// A tunnel node at each end (each owns its namespace).
    Tunnel { a: Box<Node>, b: Box<Node> },
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Stop both daemons before either namespace (and with it the shared veth) goes away.
        if let Topology::Tunnel { a, b } = self {
            let _ = a.stop();
            let _ = b.stop();
        }
    }
}

impl Topology {
    fn client_ns(&self) -> &Netns {
        match self {
            Topology::Veth { a, .. } => a,
            Topology::Tunnel { a, .. } => &a.host.ns,
        }
    }

    fn server_ns(&self) -> &Netns {
        match self {
            Topology::Veth { b, .. } => b,
            Topology::Tunnel { b, .. } => &b.host.ns,
        }
    }

    /// The client's interface towards the server (the tunnel's, or the veth).
    fn client_ifname(&self) -> &str {
        match self {
            Topology::Veth { .. } => "eth0",
            Topology::Tunnel { a, .. } => &a.ifname,
        }
    }

    /// The address iperf3 clients connect to.
    fn server_addr(&self) -> String {
        match self {
            Topology::Veth { .. } => "10.99.0.2".into(),
            Topology::Tunnel { b, .. } => b.tunnel_v4().to_string(),
        }
    }

    /// Fails with a node's log tail if a tunnel process has exited.
    fn check_running(&mut self) -> Result<()> {
        if let Topology::Tunnel { a, b } = self {
            for node in [a, b] {
                if let Err(e) = node.check_running() {
                    bail!("{} stopped: {}", node.ifname, tail(&format!("{e:#}"), 5));
                }
            }
        }
        Ok(())
    }

    /// Peak RSS of the tunnel processes (max of both ends), KiB.
    fn peak_rss_kib(&self) -> Result<Option<u64>> {
        let Topology::Tunnel { a, b } = self else {
            return Ok(None);
        };
        let mut peak = 0;
        for node in [a, b] {
            let pid = node
                .pid()
                .ok_or_else(|| anyhow!("{} has no process", node.ifname))?;
            peak = peak.max(vm_hwm_kib(pid)?);
        }
        Ok(Some(peak))
    }
}

/// Two namespaces joined by a veth pair `eth0` ↔ `eth0` with `10.99.0.1/24` and `10.99.0.2/24`.
/// GRO is turned on at both ends, as real NICs have it by default (veth does not): the same
/// for every contender.
fn direct_pair() -> Result<(Netns, Netns)> {
    let a = Netns::new("tgbn")?;
    let b = Netns::new("tgbn")?;
    veth(&a, "eth0", &["10.99.0.1/24"], &b, "eth0", &["10.99.0.2/24"])?;
    for ns in [&a, &b] {
        ns.exec("ethtool", &["-K", "eth0", "gro", "on"])?;
    }
    Ok((a, b))
}

/// Builds the topology of `kind` and checks that it carries traffic at MTU 1280.
fn set_up(kind: &ContenderKind, notes: &mut Vec<String>) -> Result<Topology> {
    let (ns_a, ns_b) = direct_pair()?;
    let topo = match kind {
        ContenderKind::Veth => {
            for ns in [&ns_a, &ns_b] {
                ns.ip(&["link", "set", "eth0", "mtu", &TUNNEL_MTU.to_string()])?;
            }
            Topology::Veth { a: ns_a, b: ns_b }
        }
        ContenderKind::Tunnel(kind) => {
            let keys_a = Keypair::generate()?;
            let keys_b = Keypair::generate()?;
            let endpoint =
                |index: u8| std::net::SocketAddr::from(([10, 99, 0, index], LISTEN_PORT));
            let b = Node::start(
                kind.clone(),
                Host { ns: ns_b, index: 2 },
                keys_b.clone(),
                &[peer_spec(&keys_a, 1, Some(endpoint(1)))],
            )
            .context("starting the server-side node")?;
            let a = Node::start(
                kind.clone(),
                Host { ns: ns_a, index: 1 },
                keys_a,
                &[peer_spec(&keys_b, 2, Some(endpoint(2)))],
            )
            .context("starting the client-side node")?;
            Topology::Tunnel {
                a: Box::new(a),
                b: Box::new(b),
            }
        }
    };
    if let Topology::Tunnel { a, b } = &topo {
        for node in [a, b] {
            let mtu = link_mtu(&node.host.ns, &node.ifname)?;
            if mtu != TUNNEL_MTU {
                bail!("{} has MTU {mtu}, expected {TUNNEL_MTU}", node.ifname);
            }
            if let Some(pid) = node.pid() {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                if comm == "ip" {
                    notes.push(format!(
                        "pid {pid} is still `ip netns exec`: peak RSS may be wrong"
                    ));
                }
            }
        }
        let dst = b.tunnel_v4().to_string();
        wait_for(
            "the first ping through the tunnel",
            HANDSHAKE_TIMEOUT,
            || {
                Ok(a.exec("ping", &["-c", "1", "-W", "1", "-w", "2", &dst])
                    .is_ok()
                    .then_some(()))
            },
        )?;
        if matches!(a.kind, Kind::Tailgate { .. }) {
            if let Ok(json) = a.tailgate_status(true) {
                notes.push(tailgate_status_note(&json));
            }
        }
    }
    Ok(topo)
}

/// "data path …, XDP …" from `tailgate status --json`, tolerant of missing fields.
fn tailgate_status_note(json: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(json) else {
        return "tailgate status: not JSON".into();
    };
    let datapath = v
        .get("datapath")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let xdp = match v.get("xdp") {
        Some(x) if x.get("attached").and_then(Value::as_bool) == Some(true) => format!(
            "XDP {}",
            x.get("mode").and_then(Value::as_str).unwrap_or("attached")
        ),
        Some(x) => format!(
            "no XDP ({})",
            x.get("reason").and_then(Value::as_str).unwrap_or("unknown")
        ),
        None => "XDP unknown".into(),
    };
    format!("data path: {datapath}; {xdp}")
}

/// Measures one contender; a set-up failure becomes the row's outcome.
pub fn measure(contender: &Contender, settings: &Settings) -> ContenderResult {
    let outcome = measure_inner(contender, settings).map_err(|e| format!("{e:#}"));
    ContenderResult {
        label: contender.label.clone(),
        outcome,
    }
}

fn measure_inner(contender: &Contender, settings: &Settings) -> Result<Measurements> {
    let mut m = Measurements::default();
    let mut topo = set_up(&contender.kind, &mut m.notes)?;
    let mut port = IPERF_PORT;
    for rep in 0..settings.repeats() {
        for test in TESTS {
            if interrupted() {
                bail!("interrupted");
            }
            port = if port >= IPERF_PORT + 40 {
                IPERF_PORT
            } else {
                port + 1
            };
            let run = run_iperf(&topo, test, settings.seconds(), port);
            topo.check_running()?;
            print_run(contender, test, rep, settings.repeats(), &run);
            record(&mut m, test, run);
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    m.peak_rss_kib = topo.peak_rss_kib()?;
    for (name, fig) in [
        ("TCP 1 stream →", &m.tcp1_fwd),
        ("TCP 1 stream ←", &m.tcp1_rev),
        ("TCP 4 streams →", &m.tcp4_fwd),
        ("TCP 4 streams ←", &m.tcp4_rev),
        ("UDP", &m.udp_pps),
    ] {
        if let Some(first) = fig.failures.first() {
            m.notes.push(format!(
                "{name}: {} of {} runs failed: {}",
                fig.failures.len(),
                fig.failures.len() + fig.runs.len(),
                one_line(first, 200)
            ));
        }
    }
    drop(topo);
    Ok(m)
}

fn print_run(contender: &Contender, test: Test, rep: usize, repeats: usize, run: &Result<Run>) {
    let what = match run {
        Ok(r) => match test {
            Test::Udp => format!(
                "{:.0} kpps received, {:.2} % lost, {} dropped by {}",
                r.udp_pps().unwrap_or(0.0) / 1e3,
                r.iperf.udp.as_ref().map_or(0.0, |u| u.lost_percent),
                r.client_tx_dropped,
                if matches!(contender.kind, ContenderKind::Veth) {
                    "the sending veth"
                } else {
                    "the sending TUN"
                }
            ),
            Test::Tcp { .. } => format!("{:.2} Gbit/s", r.iperf.bits_per_second / 1e9),
        },
        Err(e) => format!("failed: {}", one_line(&format!("{e:#}"), 160)),
    };
    println!(
        "   {:<24} {:<16} run {}/{}: {what}",
        contender.label,
        test.name(),
        rep + 1,
        repeats
    );
}

fn record(m: &mut Measurements, test: Test, run: Result<Run>) {
    let run = run.map_err(|e| one_line(&format!("{e:#}"), 300));
    let gbit = |r: &Run| r.iperf.bits_per_second / 1e9;
    match test {
        Test::Tcp {
            streams: 1,
            reverse: false,
        } => {
            m.tcp1_fwd
                .record(run.as_ref().map(gbit).map_err(Clone::clone));
            if let Ok(r) = &run {
                let gb = r.iperf.bytes as f64 / 1e9;
                if gb > 0.0 {
                    m.cpu_s_per_gb.record(Ok(r.busy_cpu_s / gb));
                }
                if let Some(re) = r.iperf.retransmits {
                    m.tcp1_retransmits.record(Ok(re as f64));
                }
                if let Some(pct) = r.outer_drop_pct() {
                    m.outer_drop_pct.record(Ok(pct));
                }
            }
        }
        Test::Tcp {
            streams: 1,
            reverse: true,
        } => m
            .tcp1_rev
            .record(run.as_ref().map(gbit).map_err(Clone::clone)),
        Test::Tcp { reverse: false, .. } => m
            .tcp4_fwd
            .record(run.as_ref().map(gbit).map_err(Clone::clone)),
        Test::Tcp { reverse: true, .. } => m
            .tcp4_rev
            .record(run.as_ref().map(gbit).map_err(Clone::clone)),
        Test::Udp => match &run {
            Ok(r) => match (r.udp_pps(), &r.iperf.udp) {
                (Some(pps), Some(u)) => {
                    m.udp_pps.record(Ok(pps));
                    m.udp_loss_pct.record(Ok(u.lost_percent));
                    if let Some(sent) = u.sent_packets.filter(|&p| p > 0) {
                        m.udp_tx_drop_pct
                            .record(Ok(r.client_tx_dropped as f64 * 100.0 / sent as f64));
                    }
                }
                _ => m
                    .udp_pps
                    .record(Err("iperf3 reported no UDP packet counts".into())),
            },
            Err(e) => m.udp_pps.record(Err(e.clone())),
        },
    }
}

/// What one iperf3 run measured, with the machine counters around it.
#[derive(Debug, Clone)]
struct Run {
    iperf: IperfResult,
    /// Whole-machine busy CPU seconds during the client's run.
    busy_cpu_s: f64,
    /// Receiving namespace's UDP counters, after minus before.
    udp_delta: UdpCounters,
    /// Transmit drops of the client's interface towards the server, after minus before.
    client_tx_dropped: u64,
}

impl Run {
    fn udp_pps(&self) -> Option<f64> {
        let u = self.iperf.udp.as_ref()?;
        (self.iperf.seconds > 0.0)
            .then(|| u.packets.saturating_sub(u.lost_packets) as f64 / self.iperf.seconds)
    }

    fn outer_drop_pct(&self) -> Option<f64> {
        let d = &self.udp_delta;
        let total = d.in_datagrams + d.rcvbuf_errors;
        (total > 0).then(|| d.rcvbuf_errors as f64 * 100.0 / total as f64)
    }
}

/// An iperf3 client in `ns` toward `target:port` for `seconds`, with JSON output and a
/// 5 s connect timeout; add the test's own arguments, then run it with [`run_iperf_client`].
pub fn iperf_client(ns: &Netns, target: &str, port: u16, seconds: u32) -> Command {
    let mut c = ns.command("iperf3");
    c.args([
        "-c",
        target,
        "-p",
        &port.to_string(),
        "-t",
        &seconds.to_string(),
    ])
    .args(["-J", "--connect-timeout", "5000"]);
    c
}

/// Runs an [`iperf_client`] of `seconds`, killed [`IPERF_SLACK`] after it should have ended.
pub fn run_iperf_client(client: &mut Command, seconds: u32) -> Result<BoundedOutput> {
    run_bounded(
        client,
        Duration::from_secs(u64::from(seconds)) + IPERF_SLACK,
    )
}

/// The result of an iperf3 client run against `server` (a one-shot server, stopped here); a
/// failed run is reported with the client's exit, stderr and the server's log.
pub fn finish_iperf(out: &BoundedOutput, mut server: crate::lab::Process) -> Result<IperfResult> {
    let result = parse_iperf(&out.stdout).map_err(|e| {
        anyhow!(
            "{e:#} (iperf3 client exit {}, stderr: {}; server log: {})",
            out.status,
            one_line(&out.stderr, 200),
            one_line(&server.log(), 200)
        )
    })?;
    if !out.status.success() {
        bail!("iperf3 client exited {}", out.status);
    }
    let _ = server.stop();
    Ok(result)
}

/// Runs one iperf3 test: a one-shot server in the server namespace, the client (with `-J`)
/// in the client namespace, both bounded.
fn run_iperf(topo: &Topology, test: Test, seconds: u32, port: u16) -> Result<Run> {
    let server_ns = topo.server_ns();
    let server = crate::lab::iperf3_server(server_ns, port)?;
    let mut client = iperf_client(topo.client_ns(), &topo.server_addr(), port, seconds);
    let payload = UDP_PAYLOAD.to_string();
    let receiver_ns = match test {
        Test::Tcp { streams, reverse } => {
            if streams > 1 {
                client.args(["-P", if streams == 4 { "4" } else { "2" }]);
            }
            if reverse {
                client.arg("-R");
                topo.client_ns()
            } else {
                server_ns
            }
        }
        Test::Udp => {
            client.args(["-u", "-b", "0", "-l", &payload]);
            server_ns
        }
    };

    let client_ns = topo.client_ns();
    let client_if = topo.client_ifname();
    let tx_dropped_before = tx_dropped(client_ns, client_if)?;
    let udp_before = udp_counters(receiver_ns)?;
    let cpu_before = busy_jiffies()?;
    let out = run_iperf_client(&mut client, seconds)?;
    let cpu_after = busy_jiffies()?;
    let udp_after = udp_counters(receiver_ns)?;
    let tx_dropped_after = tx_dropped(client_ns, client_if)?;
    let iperf = finish_iperf(&out, server)?;
    Ok(Run {
        iperf,
        busy_cpu_s: cpu_after.saturating_sub(cpu_before) as f64 / clock_ticks(),
        client_tx_dropped: tx_dropped_after.saturating_sub(tx_dropped_before),
        udp_delta: UdpCounters {
            in_datagrams: udp_after
                .in_datagrams
                .saturating_sub(udp_before.in_datagrams),
            rcvbuf_errors: udp_after
                .rcvbuf_errors
                .saturating_sub(udp_before.rcvbuf_errors),
        },
    })
}

/// The parts of an iperf3 client's JSON report the benchmark uses.
#[derive(Debug, Clone, PartialEq)]
pub struct IperfResult {
    /// Bytes the receiving side got.
    pub bytes: u64,
    /// Seconds the receiving side measured.
    pub seconds: f64,
    /// Receive rate, bit/s.
    pub bits_per_second: f64,
    /// TCP retransmits by the sender (TCP only).
    pub retransmits: Option<u64>,
    /// Packet counts (UDP only).
    pub udp: Option<UdpResult>,
}

/// UDP packet counts from iperf3's receiver.
#[derive(Debug, Clone, PartialEq)]
pub struct UdpResult {
    /// Datagrams the sender sent, as far as the receiver can tell (highest sequence number).
    pub packets: u64,
    /// Datagrams that never arrived.
    pub lost_packets: u64,
    /// `lost_packets` as percent of `packets`.
    pub lost_percent: f64,
    /// Datagrams the sender counted (`end.sum_sent.packets`), if reported.
    pub sent_packets: Option<u64>,
}

/// Parses an iperf3 client's `-J` output (TCP or UDP, either direction): the receiver's
/// totals from `end.sum_received`, retransmits from `end.sum_sent`.
pub fn parse_iperf(json: &str) -> Result<IperfResult> {
    let v: Value = serde_json::from_str(json.trim()).with_context(|| {
        format!(
            "iperf3 output is not JSON: {:?}",
            one_line(json, 200).as_str()
        )
    })?;
    if let Some(err) = v.get("error").and_then(Value::as_str) {
        bail!("iperf3: {err}");
    }
    let end = v
        .get("end")
        .ok_or_else(|| anyhow!("iperf3 JSON has no \"end\" section"))?;
    let received = end
        .get("sum_received")
        .ok_or_else(|| anyhow!("iperf3 JSON has no end.sum_received"))?;
    let num = |obj: &Value, key: &str| -> Result<f64> {
        obj.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| anyhow!("iperf3 JSON: end.sum_received.{key} missing or not a number"))
    };
    let count = |obj: &Value, key: &str| -> Option<u64> { obj.get(key).and_then(Value::as_u64) };
    let bytes = count(received, "bytes")
        .ok_or_else(|| anyhow!("iperf3 JSON: end.sum_received.bytes missing"))?;
    let seconds = num(received, "seconds")?;
    let bits_per_second = num(received, "bits_per_second")?;
    let sent = end.get("sum_sent");
    let retransmits = sent.and_then(|s| count(s, "retransmits"));
    let udp = match (count(received, "packets"), count(received, "lost_packets")) {
        (Some(packets), Some(lost_packets)) => Some(UdpResult {
            packets,
            lost_packets,
            lost_percent: received
                .get("lost_percent")
                .and_then(Value::as_f64)
                .unwrap_or(0.0),
            sent_packets: sent.and_then(|s| count(s, "packets")),
        }),
        _ => None,
    };
    Ok(IperfResult {
        bytes,
        seconds,
        bits_per_second,
        retransmits,
        udp,
    })
}

/// UDP counters of one namespace (`/proc/net/snmp`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpCounters {
    /// Datagrams delivered to sockets.
    pub in_datagrams: u64,
    /// Datagrams dropped because a socket's receive buffer was full.
    pub rcvbuf_errors: u64,
}

fn udp_counters(ns: &Netns) -> Result<UdpCounters> {
    parse_snmp_udp(&ns.exec("cat", &["/proc/net/snmp"])?)
}

/// Parses the `Udp:` header/value line pair of `/proc/net/snmp`.
pub fn parse_snmp_udp(snmp: &str) -> Result<UdpCounters> {
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("/proc/net/snmp has no Udp lines");
    };
    let mut c = UdpCounters::default();
    let mut seen = 0;
    for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
        let slot = match name {
            "InDatagrams" => &mut c.in_datagrams,
            "RcvbufErrors" => &mut c.rcvbuf_errors,
            _ => continue,
        };
        *slot = value
            .parse()
            .with_context(|| format!("/proc/net/snmp: Udp {name} = {value:?}"))?;
        seen += 1;
    }
    if seen != 2 {
        bail!("/proc/net/snmp: Udp InDatagrams or RcvbufErrors missing");
    }
    Ok(c)
}

/// Busy jiffies of the whole machine (everything but idle and iowait) from `/proc/stat`.
fn busy_jiffies() -> Result<u64> {
    parse_busy_jiffies(&std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?)
}

/// Busy jiffies from the `cpu` line of `/proc/stat`: user + nice + system + irq + softirq +
/// steal (guest time is already part of user).
pub fn parse_busy_jiffies(stat: &str) -> Result<u64> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("/proc/stat has no cpu line"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().with_context(|| format!("/proc/stat: {f:?}")))
        .collect::<Result<_>>()?;
    if fields.len() < 8 {
        bail!(
            "/proc/stat cpu line has {} fields, expected 8",
            fields.len()
        );
    }
    // user nice system idle iowait irq softirq steal
    Ok(fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7])
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// `VmHWM` of a process, KiB.
fn vm_hwm_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_vm_hwm(&status).with_context(|| format!("/proc/{pid}/status"))
}

/// The `VmHWM:` line of `/proc/<pid>/status`, KiB.
pub fn parse_vm_hwm(status: &str) -> Result<u64> {
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or_else(|| anyhow!("no VmHWM line"))?;
    let value = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("empty VmHWM line"))?;
    value
        .parse()
        .with_context(|| format!("VmHWM value {value:?}"))
}

/// `tx_dropped` of an interface in `ns` (`ip netns exec` mounts that namespace's sysfs).
fn tx_dropped(ns: &Netns, ifname: &str) -> Result<u64> {
    let path = format!("/sys/class/net/{ifname}/statistics/tx_dropped");
    let v = ns.exec("cat", &[&path])?;
    v.trim()
        .parse()
        .with_context(|| format!("{path} in {}: {:?}", ns.name(), v.trim()))
}

fn link_mtu(ns: &Netns, ifname: &str) -> Result<u16> {
    let out = ns.ip(&["-o", "link", "show", "dev", ifname])?;
    let mut words = out.split_whitespace();
    while let Some(w) = words.next() {
        if w == "mtu" {
            let v = words.next().unwrap_or_default();
            return v.parse().with_context(|| format!("MTU of {ifname}: {v:?}"));
        }
    }
    bail!("no MTU in `ip link show {ifname}`: {}", out.trim())
}

/// Output of a command run with a deadline.
#[derive(Debug)]
pub struct BoundedOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `cmd` to completion, killing it (by its pid) if it takes longer than `timeout`.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<BoundedOutput> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {timeout:?} and was killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out.join().map_err(|_| anyhow!("stdout reader panicked"))?;
    let stderr = err.join().map_err(|_| anyhow!("stderr reader panicked"))?;
    Ok(BoundedOutput {
        status,
        stdout,
        stderr,
    })
}

/// Removes `TS_DEBUG_MTU` from this process's environment so that tailgate daemons use MTU
/// 1280; returns the value it had. Call before any thread is started.
pub fn clear_mtu_override() -> Option<String> {
    let old = std::env::var(MTU_ENV).ok();
    if old.is_some() {
        std::env::remove_var(MTU_ENV);
    }
    old
}

/// What the report says about the machine and the software.
#[derive(Debug, Clone)]
pub struct Machine {
    /// CPU model from `/proc/cpuinfo`.
    pub cpu: String,
    /// Online CPUs.
    pub cores: usize,
    /// `uname -r`.
    pub kernel: String,
    /// UTC date and time of the run.
    pub date: String,
    /// tailgate's git commit (and whether the tree had changes).
    pub commit: String,
    /// `wireguard-go --version`.
    pub wireguard_go: String,
    /// `boringtun-cli --version`.
    pub boringtun: String,
    /// `iperf3 --version`.
    pub iperf3: String,
    /// `/proc/loadavg` when the run started (other work on the machine skews the figures).
    pub loadavg: String,
}

impl Machine {
    /// The "Machine" section of a report: CPU, cores, kernel, date and commit, then `tools`
    /// (name and version each), then the load average at the start.
    pub fn markdown(&self, tools: &[(&str, &str)]) -> String {
        let mut s = String::from("## Machine\n\n| | |\n|---|---|\n");
        let cores = self.cores.to_string();
        let rows = [
            ("CPU", self.cpu.as_str()),
            ("cores", &cores),
            ("kernel", &self.kernel),
            ("date", &self.date),
            ("tailgate commit", &self.commit),
        ]
        .into_iter()
        .chain(tools.iter().copied())
        .chain([("load average at start", self.loadavg.as_str())]);
        for (k, v) in rows {
            let _ = writeln!(s, "| {k} | {} |", one_line(v, 200));
        }
        s
    }

    /// Collects the description; pieces that cannot be found read "unknown".
    pub fn describe(tailgate: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or_else(|_| {
                cpuinfo
                    .lines()
                    .filter(|l| l.starts_with("processor"))
                    .count()
            });
        let commit = checkout_commit(tailgate);
        Machine {
            cpu,
            cores,
            kernel: first_line("uname", &["-r"]).unwrap_or_else(|| "unknown".into()),
            date: first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
                .unwrap_or_else(|| "unknown".into()),
            commit,
            wireguard_go: first_line("wireguard-go", &["--version"])
                .unwrap_or_else(|| "not found".into()),
            boringtun: first_line("boringtun-cli", &["--version"])
                .unwrap_or_else(|| "not found".into()),
            iperf3: first_line("iperf3", &["--version"]).unwrap_or_else(|| "not found".into()),
            loadavg: std::fs::read_to_string("/proc/loadavg")
                .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|_| "unknown".into()),
        }
    }
}

/// The git commit of the checkout the `tailgate` binary was built in (…/target/release), else
/// of the one this benchmark was built from (a separate target directory), marked when the
/// tree has uncommitted changes; "unknown" outside a checkout.
fn checkout_commit(tailgate: &Path) -> String {
    let built_in = tailgate
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let bench_checkout = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for repo in built_in.into_iter().chain([bench_checkout]) {
        let repo = repo.to_string_lossy().into_owned();
        let Some(commit) = first_line("git", &["-C", &repo, "rev-parse", "--short=12", "HEAD"])
        else {
            continue;
        };
        let status = ["-C", &repo, "status", "--porcelain", "--untracked-files=no"];
        let dirty = helper("git", &status).is_some_and(|s| !s.trim().is_empty());
        return if dirty {
            format!("{commit} (with uncommitted changes)")
        } else {
            commit
        };
    }
    "unknown".into()
}

fn helper(program: &str, args: &[&str]) -> Option<String> {
    let out = run_bounded(Command::new(program).args(args), HELPER_TIMEOUT).ok()?;
    out.status.success().then_some(out.stdout)
}

fn first_line(program: &str, args: &[&str]) -> Option<String> {
    helper(program, args)?
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// One line, at most `max` characters, safe inside a Markdown table cell.
/// One line, at most `max` characters, safe inside a Markdown table cell.
pub fn one_line(s: &str, max: usize) -> String {
    let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out: String = joined.chars().take(max).collect();
    if joined.chars().count() > max {
        out.push('…');
    }
    out.replace('|', "\\|")
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join(" / ")
}

/// Which way a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// The columns of the main table: header, better direction, value, format.
struct Column {
    header: &'static str,
    better: Better,
    value: fn(&Measurements) -> Option<f64>,
    digits: usize,
}

const COLUMNS: [Column; 9] = [
    Column {
        header: "TCP 1 stream → Gbit/s",
        better: Better::Higher,
        value: |m| m.tcp1_fwd.median(),
        digits: 2,
    },
    Column {
        header: "TCP 1 stream ← Gbit/s",
        better: Better::Higher,
        value: |m| m.tcp1_rev.median(),
        digits: 2,
    },
    Column {
        header: "TCP 4 streams → Gbit/s",
        better: Better::Higher,
        value: |m| m.tcp4_fwd.median(),
        digits: 2,
    },
    Column {
        header: "TCP 4 streams ← Gbit/s",
        better: Better::Higher,
        value: |m| m.tcp4_rev.median(),
        digits: 2,
    },
    Column {
        header: "UDP kpps received",
        better: Better::Higher,
        value: |m| m.udp_pps.median().map(|p| p / 1e3),
        digits: 0,
    },
    Column {
        header: "UDP loss %",
        better: Better::Lower,
        value: |m| m.udp_loss_pct.median(),
        digits: 1,
    },
    Column {
        header: "CPU s/GB (TCP 1 →)",
        better: Better::Lower,
        value: |m| m.cpu_s_per_gb.median(),
        digits: 2,
    },
    Column {
        header: "outer UDP drops % (TCP 1 →)",
        better: Better::Lower,
        value: |m| m.outer_drop_pct.median(),
        digits: 2,
    },
    Column {
        header: "peak RSS MiB",
        better: Better::Lower,
        value: |m| m.peak_rss_kib.map(|k| k as f64 / 1024.0),
        digits: 1,
    },
];

/// Columns that get a tailgate / peer ratio (the loss and drop percentages do not: ratios of
/// percentages near zero say little).
const RATIO_COLUMNS: [usize; 7] = [0, 1, 2, 3, 4, 6, 8];

fn fmt_value(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) => format!("{v:.digits$}"),
        None => "–".into(),
    }
}

/// The Markdown report: machine, set-up, results, tailgate's ratios, notes and every run.
pub fn render_markdown(
    machine: &Machine,
    settings: &Settings,
    results: &[ContenderResult],
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Tunnel benchmark\n");
    let _ = writeln!(
        s,
        "Written by `cargo xtask bench tunnel{}`. {}\n",
        if settings.quick { " --quick" } else { "" },
        if settings.quick {
            "Quick mode: one run of 2 s per figure, so the figures are only indicative."
        } else {
            "Each figure is the median of 3 runs of 5 s."
        }
    );
    s.push_str(&machine.markdown(&[
        ("wireguard-go", &machine.wireguard_go),
        ("boringtun-cli", &machine.boringtun),
        ("iperf3", &machine.iperf3),
    ]));
    let _ = writeln!(s, "\n## Set-up\n");
    let _ = writeln!(
        s,
        "Per contender, two fresh network namespaces joined directly by one veth pair \
         (`10.99.0.1` ↔ `10.99.0.2`); both tunnel ends, the iperf3 client (side 1) and the \
         iperf3 server (side 2) share this machine's {} cores. Every tunnel has MTU {TUNNEL_MTU}; \
         the veth row runs iperf3 over the bare veth with its MTU also set to {TUNNEL_MTU}.\n",
        machine.cores
    );
    let _ = writeln!(
        s,
        "- TCP: `iperf3 -c … -t {secs}` with 1 and 4 (`-P 4`) streams, client → server (→) and \
         server → client (←, `-R`); rates as the receiver measured them.\n\
         - UDP: `iperf3 -u -b 0 -l {UDP_PAYLOAD}`, client → server, datagrams per second the \
         server received. {UDP_PAYLOAD}-byte payloads make full {TUNNEL_MTU}-byte IPv4 packets; \
         iperf3's usual 1400+-byte datagrams would not fit a {TUNNEL_MTU} MTU tunnel and would \
         be fragmented. Unlimited (`-b 0`), the sender offers far more than a tunnel carries \
         and keeps one of the cores busy, so the loss column is high by design; \
         \"Every run\" shows how much of it the sending interface (the TUN device's queue) \
         dropped because the tunnel did not read fast enough.\n\
         - CPU s/GB: busy jiffies of the whole machine (`/proc/stat`: user, nice, system, irq, \
         softirq, steal) during the TCP 1-stream → run, divided by the GB (10⁹ bytes) received. \
         It includes everything else the machine did meanwhile.\n\
         - outer UDP drops: `Udp RcvbufErrors` of the receiving namespace during the TCP \
         1-stream → run, in percent of `InDatagrams + RcvbufErrors` (with UDP GRO a datagram \
         can carry several packets, so this is indicative).\n\
         - peak RSS: `VmHWM` of the tunnel processes after all runs, the larger of the two ends.\n",
        secs = settings.seconds()
    );

    let _ = writeln!(s, "## Results\n");
    let _ = write!(s, "| contender |");
    for c in &COLUMNS {
        let _ = write!(s, " {} |", c.header);
    }
    let _ = writeln!(s, " status |");
    let _ = writeln!(s, "|---|{}---|", "---:|".repeat(COLUMNS.len()));
    for r in results {
        let _ = write!(s, "| {} |", r.label);
        match &r.outcome {
            Ok(m) => {
                for c in &COLUMNS {
                    let _ = write!(s, " {} |", fmt_value((c.value)(m), c.digits));
                }
                let incomplete = [
                    &m.tcp1_fwd,
                    &m.tcp1_rev,
                    &m.tcp4_fwd,
                    &m.tcp4_rev,
                    &m.udp_pps,
                ]
                .iter()
                .any(|f| !f.failures.is_empty());
                let _ = writeln!(
                    s,
                    " {} |",
                    if incomplete { "some runs failed" } else { "ok" }
                );
            }
            Err(e) => {
                let _ = write!(s, "{}", " – |".repeat(COLUMNS.len()));
                let _ = writeln!(s, " failed: {} |", one_line(e, 200));
            }
        }
    }

    let tailgates: Vec<&ContenderResult> = results
        .iter()
        .filter(|r| r.label.starts_with(TAILGATE))
        .collect();
    let peers: Vec<&ContenderResult> = results
        .iter()
        .filter(|r| !r.label.starts_with(TAILGATE))
        .collect();
    if !tailgates.is_empty() && !peers.is_empty() {
        let _ = writeln!(s, "\n## tailgate's ratios\n");
        let _ = writeln!(
            s,
            "tailgate's median divided by the peer's. Above 1 is better for throughput and \
             packet rate; below 1 is better for CPU s/GB and RSS. \"–\" where either side has \
             no figure.\n"
        );
        let _ = write!(s, "| ratio |");
        for &i in &RATIO_COLUMNS {
            let c = &COLUMNS[i];
            let arrow = match c.better {
                Better::Higher => "(↑ better)",
                Better::Lower => "(↓ better)",
            };
            let _ = write!(s, " {} {arrow} |", c.header);
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "|---|{}", "---:|".repeat(RATIO_COLUMNS.len()));
        for t in &tailgates {
            for p in &peers {
                let _ = write!(s, "| {} / {} |", t.label, p.label);
                for &i in &RATIO_COLUMNS {
                    let c = &COLUMNS[i];
                    let ratio = match (&t.outcome, &p.outcome) {
                        (Ok(tm), Ok(pm)) => match ((c.value)(tm), (c.value)(pm)) {
                            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                            _ => None,
                        },
                        _ => None,
                    };
                    let _ = write!(
                        s,
                        " {} |",
                        ratio.map_or_else(|| "–".into(), |r| format!("{r:.2}×"))
                    );
                }
                let _ = writeln!(s);
            }
        }
    }

    let _ = writeln!(s, "\n## Notes\n");
    let mut any = false;
    for r in results {
        let notes: Vec<String> = match &r.outcome {
            Ok(m) => m.notes.clone(),
            Err(e) => vec![format!("failed: {}", one_line(e, 600))],
        };
        for n in notes {
            let _ = writeln!(s, "- {}: {}", r.label, n);
            any = true;
        }
    }
    if !any {
        let _ = writeln!(s, "- none");
    }

    let _ = writeln!(s, "\n## Every run\n");
    let _ = writeln!(s, "| contender | figure | runs |\n|---|---|---|");
    for r in results {
        let Ok(m) = &r.outcome else { continue };
        for (name, fig, scale, digits) in [
            ("TCP 1 stream → Gbit/s", &m.tcp1_fwd, 1.0, 2),
            ("TCP 1 stream ← Gbit/s", &m.tcp1_rev, 1.0, 2),
            ("TCP 4 streams → Gbit/s", &m.tcp4_fwd, 1.0, 2),
            ("TCP 4 streams ← Gbit/s", &m.tcp4_rev, 1.0, 2),
            ("UDP kpps received", &m.udp_pps, 1e-3, 0),
            ("UDP loss %", &m.udp_loss_pct, 1.0, 2),
            (
                "UDP dropped by the sending interface %",
                &m.udp_tx_drop_pct,
                1.0,
                2,
            ),
            ("CPU s/GB", &m.cpu_s_per_gb, 1.0, 2),
            ("TCP 1 stream → retransmits", &m.tcp1_retransmits, 1.0, 0),
            ("outer UDP drops %", &m.outer_drop_pct, 1.0, 2),
        ] {
            let mut runs: Vec<String> = fig
                .runs
                .iter()
                .map(|v| format!("{:.digits$}", v * scale))
                .collect();
            runs.extend(fig.failures.iter().map(|_| "failed".to_string()));
            if !runs.is_empty() {
                let _ = writeln!(s, "| {} | {name} | {} |", r.label, runs.join(", "));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDP_CLIENT: &str = r#"{"start":{},"intervals":[],"end":{
        "streams":[],
        "sum":{"start":0,"end":2.0001,"seconds":2.0001,"bytes":1789433520,"bits_per_second":7157698291.5,"jitter_ms":0.0006,"lost_packets":103348,"packets":1429260,"lost_percent":7.23,"sender":true},
        "sum_sent":{"start":0,"end":2.00001,"seconds":2.00001,"bytes":1789433520,"bits_per_second":7157698291.5,"jitter_ms":0,"lost_packets":0,"packets":1429260,"lost_percent":0,"sender":true},
        "sum_received":{"start":0,"end":2.0001,"seconds":2.0001,"bytes":1660008020,"bits_per_second":6639700094.9,"jitter_ms":0.0006,"lost_packets":103348,"packets":1429233,"lost_percent":7.2308,"sender":false},
        "cpu_utilization_percent":{}}}"#;

    const TCP_REVERSE: &str = r#"{"start":{},"intervals":[],"end":{"streams":[],
        "sum_sent":{"start":0,"end":2.000546,"seconds":2.000546,"bytes":11652300800,"bits_per_second":46596482360.3,"retransmits":3193,"sender":false},
        "sum_received":{"start":0,"end":2.000035,"seconds":2.000035,"bytes":11651514368,"bits_per_second":46605241880.2,"sender":false}}}"#;

    #[test]
    fn parses_udp_report() {
        let r = parse_iperf(UDP_CLIENT).expect("parses");
        assert_eq!(r.bytes, 1_660_008_020);
        let u = r.udp.expect("udp counts");
        assert_eq!(u.sent_packets, Some(1_429_260));
        assert_eq!(u.packets - u.lost_packets, 1_660_008_020 / 1252);
        assert!((u.lost_percent - 7.2308).abs() < 1e-9);
    }

    #[test]
    fn parses_tcp_report() {
        let r = parse_iperf(TCP_REVERSE).expect("parses");
        assert_eq!(r.bytes, 11_651_514_368);
        assert_eq!(r.retransmits, Some(3193));
        assert!(r.udp.is_none());
        assert!((r.bits_per_second - 46_605_241_880.2).abs() < 1.0);
    }

    #[test]
    fn iperf_errors_are_reported() {
        let e = parse_iperf(r#"{"start":{},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}"#)
            .expect_err("error");
        assert!(format!("{e:#}").contains("Connection refused"));
        let e = parse_iperf("iperf3: error - boom").expect_err("not json");
        assert!(format!("{e:#}").contains("not JSON"));
        let e = parse_iperf(r#"{"end":{"sum_received":{"bytes":"x"}}}"#).expect_err("bad");
        assert!(format!("{e:#}").contains("bytes"));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN]), None);
    }

    #[test]
    fn parses_proc_files() {
        let stat = "cpu  100 5 50 1000 20 3 7 1 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(
            parse_busy_jiffies(stat).expect("stat"),
            100 + 5 + 50 + 3 + 7 + 1
        );
        let snmp = "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
                    Udp: 1000 2 30 900 25 0 0 0 0\n\
                    UdpLite: InDatagrams NoPorts\nUdpLite: 0 0\n";
        assert_eq!(
            parse_snmp_udp(snmp).expect("snmp"),
            UdpCounters {
                in_datagrams: 1000,
                rcvbuf_errors: 25
            }
        );
        assert!(parse_snmp_udp("Ip: a\nIp: 1\n").is_err());
        assert_eq!(
            parse_vm_hwm("Name:\tx\nVmPeak:\t 900 kB\nVmHWM:\t   12345 kB\n").expect("hwm"),
            12345
        );
    }

    #[test]
    fn renders_failed_rows_and_ratios() {
        let mut m = Measurements::default();
        m.tcp1_fwd.runs = vec![1.0, 2.0, 3.0];
        m.udp_pps.runs = vec![100_000.0];
        m.peak_rss_kib = Some(2048);
        let mut peer = m.clone();
        peer.tcp1_fwd.runs = vec![0.5];
        let results = vec![
            ContenderResult {
                label: WIREGUARD_GO.into(),
                outcome: Ok(peer),
            },
            ContenderResult {
                label: BORINGTUN.into(),
                outcome: Err("boringtun-cli: not | found\nsecond line".into()),
            },
            ContenderResult {
                label: TAILGATE.into(),
                outcome: Ok(m),
            },
        ];
        let machine = Machine {
            cpu: "test cpu".into(),
            cores: 2,
            kernel: "6.1".into(),
            date: "today".into(),
            commit: "abc".into(),
            wireguard_go: "v1".into(),
            boringtun: "0.7.1".into(),
            iperf3: "3.12".into(),
            loadavg: "0 0 0".into(),
        };
        let settings = Settings {
            tailgate: PathBuf::from("/bin/false"),
            quick: true,
        };
        let md = render_markdown(&machine, &settings, &results);
        assert!(md.contains("| boringtun-cli | – |"), "{md}");
        assert!(
            md.contains("failed: boringtun-cli: not \\| found second line"),
            "{md}"
        );
        assert!(md.contains("| tailgate / wireguard-go | 4.00× |"), "{md}");
        assert!(md.contains("| tailgate / boringtun-cli | – |"), "{md}");
        assert!(md.contains("| 2.0 | ok |"), "{md}");
    }
}
