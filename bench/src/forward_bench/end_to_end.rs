//! End to end through a subnet router: a tailgate client (node 1, `accept_routes = true`)
//! reaches the LAN host `192.168.50.5` behind a tailgate subnet router (node 2, advertising
//! `192.168.50.0/24`, SNAT on) over a real WireGuard tunnel. Three such labs are built side
//! by side: one whose router runs the XDP fast path as by default (`--xdp auto`: `tun_forward`
//! on its TUN, `lan_return` in native mode on its LAN veth), one with `--xdp generic`
//! (`lan_return` in generic mode, after GRO) and one whose router runs the nftables fallback
//! (`--no-xdp`: kernel forwarding and masquerade); the clients are identical. Each iperf3 test
//! then runs on one lab after the other, repetition by repetition.
//!
//! Tests: TCP with one stream client → LAN host (→) and LAN host → client (←, `-R`), and UDP
//! with 64-byte payloads (92-byte IPv4 packets) at an offered 1 Gbit/s, far more than the
//! tunnel carries, in both directions; the UDP figure is the datagrams per second the
//! receiver got. Around every run the router's `tailgate status --json` is read, and the
//! difference of its XDP counters says how many packets XDP itself forwarded.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::{interrupted, one_line, Durations};
use crate::lab::node::{peer_spec, PeerSpec, LISTEN_PORT};
use crate::lab::{wait_for, Keypair, Kind, Lab, Netns, Node};
use crate::tunnel_bench::{finish_iperf, iperf_client, run_iperf_client, Figure, IperfResult};

/// The LAN the router serves.
pub const LAN_ROUTE: &str = "192.168.50.0/24";
/// The router's address on the LAN (the SNAT source).
pub const ROUTER_LAN_CIDR: &str = "192.168.50.1/24";
/// The LAN host, where the iperf3 server runs.
pub const LAN_HOST: &str = "192.168.50.5";
/// UDP payload of the packet-rate tests.
pub const UDP_PAYLOAD: u16 = 64;
/// Offered UDP rate (`iperf3 -b`): with 64-byte payloads about 2 million packets/s, more than
/// either path forwards.
pub const UDP_RATE: &str = "1G";
/// How long the router may take to serve the LAN route on its path.
const PATH_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the first ping to the LAN host may take (handshake included).
const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// First iperf3 port; runs rotate through a few so that no run waits for an old socket.
const IPERF_PORT: u16 = 5301;

/// The router's forwarding path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouterPath {
    /// The XDP fast path (`tun_forward` + `lan_return`) as the daemon runs it by default
    /// (`--xdp auto`: `lan_return` in native mode on the LAN veth, no `wan_ingress` on the
    /// veth underlay).
    Xdp,
    /// The XDP fast path with `--xdp generic`: `lan_return` in generic mode (after GRO), and
    /// `wan_ingress` in generic mode on the underlay.
    XdpGeneric,
    /// The nftables fallback: kernel forwarding + masquerade (`--no-xdp`).
    Nftables,
}

impl RouterPath {
    /// Every path, the default XDP path first.
    pub const ALL: [RouterPath; 3] = [
        RouterPath::Xdp,
        RouterPath::XdpGeneric,
        RouterPath::Nftables,
    ];

    /// Whether the router runs the XDP fast path.
    pub fn is_xdp(self) -> bool {
        !matches!(self, RouterPath::Nftables)
    }

    /// Daemon arguments of the router on this path.
    pub fn router_args(self) -> Vec<String> {
        let args: &[&str] = match self {
            // `auto`, as users get it (the lab's config asks for native mode).
            RouterPath::Xdp => &["--xdp", "auto"],
            RouterPath::XdpGeneric => &["--xdp", "generic"],
            RouterPath::Nftables => &["--no-xdp"],
        };
        args.iter().map(|a| a.to_string()).collect()
    }
}

impl fmt::Display for RouterPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RouterPath::Xdp => "XDP (default, --xdp auto)",
            RouterPath::XdpGeneric => "XDP (--xdp generic)",
            RouterPath::Nftables => "nftables (--no-xdp)",
        })
    }
}

/// One iperf3 test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E2eTest {
    /// TCP, one stream, client → LAN host.
    TcpFwd,
    /// TCP, one stream, LAN host → client (`-R`).
    TcpRev,
    /// UDP, 64-byte payloads, client → LAN host.
    UdpFwd,
    /// UDP, 64-byte payloads, LAN host → client (`-R`).
    UdpRev,
}

impl E2eTest {
    /// The tests of each repetition, in order.
    pub const ALL: [E2eTest; 4] = [
        E2eTest::TcpFwd,
        E2eTest::TcpRev,
        E2eTest::UdpFwd,
        E2eTest::UdpRev,
    ];

    /// Whether the figure is a packet rate (UDP) rather than a throughput (TCP).
    pub fn is_udp(self) -> bool {
        matches!(self, E2eTest::UdpFwd | E2eTest::UdpRev)
    }

    /// Whether the data flows from the LAN host to the client.
    pub fn is_reverse(self) -> bool {
        matches!(self, E2eTest::TcpRev | E2eTest::UdpRev)
    }

    /// Whether the LAN host sends with full transport checksums (TX checksum offload off on
    /// its veth, on every path): UDP from the LAN, so that the XDP router's `lan_return` can
    /// hand the replies to the daemon's AF_XDP sockets (partial checksums go to the kernel).
    pub fn full_checksums(self) -> bool {
        self == E2eTest::UdpRev
    }

    /// Short name for tables and logs.
    pub fn name(self) -> &'static str {
        match self {
            E2eTest::TcpFwd => "TCP 1 stream → LAN",
            E2eTest::TcpRev => "TCP 1 stream ← LAN",
            E2eTest::UdpFwd => "UDP 64 B → LAN",
            E2eTest::UdpRev => "UDP 64 B ← LAN",
        }
    }

    /// Unit of [`TestFigures::value`].
    pub fn unit(self) -> &'static str {
        if self.is_udp() {
            "packets/s"
        } else {
            "Gbit/s"
        }
    }

    /// The iperf3 arguments of the test besides the target, port and duration.
    pub fn iperf_args(self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        if self.is_udp() {
            a.extend(["-u", "-b", UDP_RATE, "-l"].map(String::from));
            a.push(UDP_PAYLOAD.to_string());
        }
        if self.is_reverse() {
            a.push("-R".into());
        }
        a
    }
}

/// Differences of the router's XDP counters over some runs (`tailgate status --json`,
/// `routing.fast_path.counters`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpDelta {
    /// `tun_forward` redirected to the LAN (`forwarded_v4 + forwarded_via6`).
    pub tun_forwarded: u64,
    /// `tun_forward` NATed and passed GSO super-packets for the kernel to segment.
    pub tun_passed_gso: u64,
    /// `tun_forward` passed for other reasons (every other `passed_*`).
    pub tun_passed_other: u64,
    /// `lan_return` de-NATed replies (`returned_v4 + returned_via6`).
    pub lan_returned: u64,
    /// `lan_return` passed untouched (every `passed_*`).
    pub lan_passed: u64,
    /// De-NATed replies `lan_return` handed to the daemon's AF_XDP sockets
    /// (`redirected_xsk`; the rest of `lan_returned` went to the kernel).
    pub lan_to_sockets: u64,
}

impl XdpDelta {
    /// The counter values of a status JSON's `routing.fast_path.counters` object.
    pub fn from_counters(c: &Value) -> XdpDelta {
        let sum = |side: &str, pick: &dyn Fn(&str) -> bool| -> u64 {
            c.get(side)
                .and_then(Value::as_object)
                .map(|o| {
                    o.iter()
                        .filter(|(k, _)| pick(k))
                        .filter_map(|(_, v)| v.as_u64())
                        .fold(0u64, u64::wrapping_add)
                })
                .unwrap_or(0)
        };
        XdpDelta {
            tun_forwarded: sum("tun", &|k| k.starts_with("forwarded_")),
            tun_passed_gso: sum("tun", &|k| k == "passed_gso"),
            tun_passed_other: sum("tun", &|k| k.starts_with("passed_") && k != "passed_gso"),
            lan_returned: sum("lan", &|k| {
                k.starts_with("returned_") && k != "returned_icmp_error"
            }),
            lan_passed: sum("lan", &|k| k.starts_with("passed_")),
            lan_to_sockets: sum("lan", &|k| k == "redirected_xsk"),
        }
    }

    /// Field-wise `self - earlier` (saturating: counters only grow).
    pub fn since(&self, earlier: &XdpDelta) -> XdpDelta {
        XdpDelta {
            tun_forwarded: self.tun_forwarded.saturating_sub(earlier.tun_forwarded),
            tun_passed_gso: self.tun_passed_gso.saturating_sub(earlier.tun_passed_gso),
            tun_passed_other: self
                .tun_passed_other
                .saturating_sub(earlier.tun_passed_other),
            lan_returned: self.lan_returned.saturating_sub(earlier.lan_returned),
            lan_passed: self.lan_passed.saturating_sub(earlier.lan_passed),
            lan_to_sockets: self.lan_to_sockets.saturating_sub(earlier.lan_to_sockets),
        }
    }

    /// Field-wise sum.
    pub fn add(&mut self, other: &XdpDelta) {
        self.tun_forwarded += other.tun_forwarded;
        self.tun_passed_gso += other.tun_passed_gso;
        self.tun_passed_other += other.tun_passed_other;
        self.lan_returned += other.lan_returned;
        self.lan_passed += other.lan_passed;
        self.lan_to_sockets += other.lan_to_sockets;
    }

    /// Packets XDP forwarded itself, either way.
    pub fn xdp_packets(&self) -> u64 {
        self.tun_forwarded + self.lan_returned
    }
}

/// The figures of one test on one path.
#[derive(Clone, Debug)]
pub struct TestFigures {
    /// The test.
    pub test: E2eTest,
    /// Gbit/s (TCP) or datagrams per second received (UDP), one value per run.
    pub value: Figure,
    /// UDP datagrams lost, percent, per run.
    pub loss_pct: Figure,
    /// TCP retransmits per run.
    pub retransmits: Figure,
    /// The router's XDP counters over all runs of this test (XDP path only).
    pub xdp: Option<XdpDelta>,
}

impl TestFigures {
    fn new(test: E2eTest) -> TestFigures {
        TestFigures {
            test,
            value: Figure::default(),
            loss_pct: Figure::default(),
            retransmits: Figure::default(),
            xdp: None,
        }
    }
}

/// The figures of one path.
#[derive(Clone, Debug)]
pub struct PathFigures {
    /// One entry per test, in [`E2eTest::ALL`] order.
    pub tests: Vec<TestFigures>,
}

impl PathFigures {
    /// The figures of `test`.
    pub fn test(&self, test: E2eTest) -> Option<&TestFigures> {
        self.tests.iter().find(|t| t.test == test)
    }

    /// The median of `test`'s values.
    pub fn median(&self, test: E2eTest) -> Option<f64> {
        self.test(test)?.value.median()
    }

    /// XDP counters over every test (XDP path only).
    pub fn xdp_total(&self) -> Option<XdpDelta> {
        let mut total: Option<XdpDelta> = None;
        for t in &self.tests {
            if let Some(d) = &t.xdp {
                total.get_or_insert_with(XdpDelta::default).add(d);
            }
        }
        total
    }
}

/// The outcome of one path.
#[derive(Clone, Debug)]
pub struct PathResult {
    /// The router's path.
    pub path: RouterPath,
    /// The figures, or why the path could not be measured.
    pub outcome: Result<PathFigures, String>,
    /// Remarks: the router's forwarding status, failed runs.
    pub notes: Vec<String>,
}

/// A client, a router on `path` and the LAN host; removed on drop.
struct RouterLab {
    lab: Lab,
    path: RouterPath,
}

impl RouterLab {
    fn router(&self) -> &Node {
        &self.lab.nodes[0]
    }

    fn client_ns(&self) -> &Netns {
        &self.lab.nodes[1].host.ns
    }

    fn lan_ns(&self) -> &Netns {
        &self.lab.lan_hosts[0]
    }

    fn status(&self) -> Result<Value> {
        let out = self.router().tailgate_status(true)?;
        serde_json::from_str(&out).context("router status is not JSON")
    }

    /// The router's XDP counters (XDP path), or `None` (nftables path).
    fn counters(&self) -> Result<Option<XdpDelta>> {
        if !self.path.is_xdp() {
            return Ok(None);
        }
        let st = self.status()?;
        let c = &st["routing"]["fast_path"]["counters"];
        if c.is_null() {
            bail!("the XDP router reports no fast-path counters");
        }
        Ok(Some(XdpDelta::from_counters(c)))
    }

    /// Turns TX checksum offload on the LAN host's veth on or off.
    fn lan_checksum_offload(&self, on: bool) -> Result<()> {
        let state = if on { "on" } else { "off" };
        self.lan_ns()
            .exec("ethtool", &["-K", "eth1", "tx", state])
            .with_context(|| format!("ethtool -K eth1 tx {state} on the LAN host"))?;
        Ok(())
    }

    fn check_running(&mut self) -> Result<()> {
        for node in &mut self.lab.nodes {
            if let Err(e) = node.check_running() {
                bail!(
                    "{} stopped: {}",
                    node.ifname,
                    one_line(&format!("{e:#}"), 400)
                );
            }
        }
        Ok(())
    }
}

fn endpoint(index: u8) -> SocketAddr {
    SocketAddr::from(([10, 99, 0, index], LISTEN_PORT))
}

fn peer_with(keys: &Keypair, index: u8, with_endpoint: bool, extra: &str) -> PeerSpec {
    let mut p = peer_spec(keys, index, with_endpoint.then(|| endpoint(index)));
    p.extra_toml = extra.to_string();
    p
}

/// Builds the lab of `path` and waits until the router serves the LAN on that path and the
/// client reaches the LAN host.
fn build(path: RouterPath, tailgate: &Path, notes: &mut Vec<String>) -> Result<RouterLab> {
    let mut lab = Lab::new()?;
    let (kc, kr) = (Keypair::generate()?, Keypair::generate()?);
    lab.start_with(
        Kind::Tailgate {
            bin: tailgate.to_path_buf(),
            args: path.router_args(),
        },
        2,
        kr.clone(),
        &[peer_with(&kc, 1, false, "")],
        &format!("advertise_routes = [\"{LAN_ROUTE}\"]\nsnat_subnet_routes = true\n"),
    )
    .context("starting the router")?;
    lab.lan_host(0, "lan0", ROUTER_LAN_CIDR, &format!("{LAN_HOST}/24"))?;
    lab.start_with(
        Kind::Tailgate {
            bin: tailgate.to_path_buf(),
            args: RouterPath::Xdp.router_args(),
        },
        1,
        kc,
        &[peer_with(
            &kr,
            2,
            true,
            &format!("name = \"router\"\nroutes = [\"{LAN_ROUTE}\"]\n"),
        )],
        "accept_routes = true\n",
    )
    .context("starting the client")?;
    let rl = RouterLab { lab, path };
    wait_for(
        &format!("the router to serve {LAN_ROUTE} on the {path} path"),
        PATH_TIMEOUT,
        || {
            let st = rl.status()?;
            let fast = &st["routing"]["fast_path"];
            Ok(match path {
                RouterPath::Xdp | RouterPath::XdpGeneric => fast["routes"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|x| x == LAN_ROUTE))
                    .then_some(()),
                RouterPath::Nftables => {
                    if fast["active"] != false {
                        bail!("the fast path is active despite --no-xdp: {st}");
                    }
                    st["routing"]["forwarding_path"]
                        .as_str()
                        .is_some_and(|p| p.contains("--no-xdp"))
                        .then_some(())
                }
            })
        },
    )
    .map_err(|e| anyhow!("{e:#}\nrouter log:\n{}", tail(&rl.router().log(), 20)))?;
    wait_for("the first ping to the LAN host", PING_TIMEOUT, || {
        Ok(rl
            .client_ns()
            .exec("ping", &["-c", "1", "-W", "1", "-w", "2", LAN_HOST])
            .is_ok()
            .then_some(()))
    })?;
    if let Ok(st) = rl.status() {
        let r = &st["routing"];
        let fast = &r["fast_path"];
        let mut s = format!(
            "router forwarding path: {}",
            r["forwarding_path"].as_str().unwrap_or("unknown")
        );
        if fast["active"] == true {
            s.push_str(&format!(
                "; tun_forward on {}; lan_return on {}",
                fast["tun"].as_str().unwrap_or("?"),
                fast["lan"]
                    .as_array()
                    .map(|l| l
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default()
            ));
        }
        notes.push(s);
    }
    Ok(rl)
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs one iperf3 test: a one-shot server on the LAN host, the client (`-J`) in the
/// client's namespace, both bounded.
fn run_iperf(rl: &RouterLab, test: E2eTest, seconds: u32, port: u16) -> Result<IperfResult> {
    let server = crate::lab::iperf3_server(rl.lan_ns(), port)?;
    let mut client = iperf_client(rl.client_ns(), LAN_HOST, port, seconds);
    client.args(test.iperf_args());
    finish_iperf(&run_iperf_client(&mut client, seconds)?, server)
}

/// Datagrams per second the receiver got, and the loss percentage.
fn udp_rate(r: &IperfResult) -> Result<(f64, f64)> {
    let u = r
        .udp
        .as_ref()
        .ok_or_else(|| anyhow!("iperf3 reported no UDP packet counts"))?;
    if r.seconds <= 0.0 {
        bail!("iperf3 reported no duration");
    }
    Ok((
        u.packets.saturating_sub(u.lost_packets) as f64 / r.seconds,
        u.lost_percent,
    ))
}

/// One measured run, with the XDP counters around it.
fn run_once(rl: &mut RouterLab, test: E2eTest, seconds: u32, port: u16) -> Result<Run> {
    if test.full_checksums() {
        rl.lan_checksum_offload(false)?;
    }
    let before = rl.counters();
    let iperf = before
        .as_ref()
        .map_err(|e| anyhow!("{e:#}"))
        .and_then(|_| run_iperf(rl, test, seconds, port));
    let restored = match test.full_checksums() {
        true => rl.lan_checksum_offload(true),
        false => Ok(()),
    };
    let before = before?;
    rl.check_running()?;
    let after = rl.counters()?;
    let iperf = iperf?;
    restored?;
    Ok(Run {
        iperf,
        xdp: match (before, after) {
            (Some(b), Some(a)) => Some(a.since(&b)),
            _ => None,
        },
    })
}

struct Run {
    iperf: IperfResult,
    xdp: Option<XdpDelta>,
}

fn record(t: &mut TestFigures, run: Result<Run>) -> String {
    match run {
        Ok(r) => {
            if let Some(d) = &r.xdp {
                t.xdp.get_or_insert_with(XdpDelta::default).add(d);
            }
            let xdp = r
                .xdp
                .map(|d| {
                    format!(
                        " (XDP: {} forwarded, {} returned ({} to AF_XDP sockets), {} GSO passed)",
                        d.tun_forwarded, d.lan_returned, d.lan_to_sockets, d.tun_passed_gso
                    )
                })
                .unwrap_or_default();
            if t.test.is_udp() {
                match udp_rate(&r.iperf) {
                    Ok((pps, loss)) => {
                        t.value.runs.push(pps);
                        t.loss_pct.runs.push(loss);
                        format!("{:.0} kpps received, {loss:.1} % lost{xdp}", pps / 1e3)
                    }
                    Err(e) => {
                        let e = format!("{e:#}");
                        t.value.failures.push(e.clone());
                        format!("failed: {e}")
                    }
                }
            } else {
                let gbit = r.iperf.bits_per_second / 1e9;
                t.value.runs.push(gbit);
                if let Some(re) = r.iperf.retransmits {
                    t.retransmits.runs.push(re as f64);
                }
                format!("{gbit:.2} Gbit/s{xdp}")
            }
        }
        Err(e) => {
            let e = one_line(&format!("{e:#}"), 300);
            t.value.failures.push(e.clone());
            format!("failed: {e}")
        }
    }
}

struct PathState {
    path: RouterPath,
    lab: Option<RouterLab>,
    error: Option<String>,
    figures: PathFigures,
    notes: Vec<String>,
}

/// Builds both labs, runs every test `d.repeats` times on each (alternating), and tears the
/// labs down. A path whose lab cannot be built, or whose router stops, gets an error.
pub fn measure(tailgate: &Path, d: &Durations) -> Vec<PathResult> {
    let tailgate: PathBuf = tailgate.to_path_buf();
    let mut states: Vec<PathState> = RouterPath::ALL
        .iter()
        .map(|&path| {
            let started = Instant::now();
            let mut notes = Vec::new();
            let (lab, error) = if interrupted() {
                (None, Some("interrupted".to_string()))
            } else {
                match build(path, &tailgate, &mut notes) {
                    Ok(l) => {
                        println!(
                            "   {path}: lab ready in {:.1} s",
                            started.elapsed().as_secs_f64()
                        );
                        (Some(l), None)
                    }
                    Err(e) => {
                        let e = format!("{e:#}");
                        println!("   {path}: lab failed: {}", one_line(&e, 300));
                        (None, Some(e))
                    }
                }
            };
            PathState {
                path,
                lab,
                error,
                figures: PathFigures {
                    tests: E2eTest::ALL.iter().map(|&t| TestFigures::new(t)).collect(),
                },
                notes,
            }
        })
        .collect();
    let mut port = IPERF_PORT;
    let repeats = d.repeats.max(1);
    'outer: for rep in 0..repeats {
        for (ti, test) in E2eTest::ALL.iter().enumerate() {
            for st in &mut states {
                if interrupted() {
                    break 'outer;
                }
                let Some(rl) = st.lab.as_mut() else { continue };
                port = if port >= IPERF_PORT + 40 {
                    IPERF_PORT
                } else {
                    port + 1
                };
                let run = run_once(rl, *test, d.iperf_seconds, port);
                let router_alive = rl.check_running();
                let line = record(&mut st.figures.tests[ti], run);
                println!(
                    "   {:<32} {:<20} run {}/{}: {line}",
                    st.path.to_string(),
                    test.name(),
                    rep + 1,
                    repeats
                );
                if let Err(e) = router_alive {
                    st.error = Some(format!("{e:#}"));
                    st.lab = None;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
    let interrupted_now = interrupted();
    states
        .into_iter()
        .map(|mut st| {
            // Tear down before the next lab (the namespaces and processes go with it).
            drop(st.lab.take());
            for t in &st.figures.tests {
                if let Some(first) = t.value.failures.first() {
                    st.notes.push(format!(
                        "{}: {} of {} runs failed: {}",
                        t.test.name(),
                        t.value.failures.len(),
                        t.value.failures.len() + t.value.runs.len(),
                        one_line(first, 200)
                    ));
                }
            }
            let outcome = match st.error {
                Some(e) if st.figures.tests.iter().all(|t| t.value.runs.is_empty()) => Err(e),
                Some(e) => {
                    st.notes
                        .push(format!("stopped early: {}", one_line(&e, 300)));
                    Ok(st.figures)
                }
                None if interrupted_now => Err("interrupted".into()),
                None => Ok(st.figures),
            };
            PathResult {
                path: st.path,
                outcome,
                notes: st.notes,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_from_status_json() {
        let c: Value = serde_json::from_str(
            r#"{"tun":{"forwarded_v4":10,"forwarded_via6":1,"snat_new_conn":3,
                "passed_no_neigh":2,"passed_gso":7,"passed_no_match":1,"dropped_error":0},
               "lan":{"returned_v4":5,"returned_via6":0,"passed_no_match":4,
                "passed_expired":1,"returned_icmp_error":9}}"#,
        )
        .unwrap();
        let d = XdpDelta::from_counters(&c);
        assert_eq!(
            d,
            XdpDelta {
                tun_forwarded: 11,
                tun_passed_gso: 7,
                tun_passed_other: 3,
                lan_returned: 5,
                lan_passed: 5,
                lan_to_sockets: 0,
            }
        );
        let z = XdpDelta::from_counters(&Value::Null);
        assert_eq!(z, XdpDelta::default());
        assert_eq!(d.since(&z), d);
        assert_eq!(z.since(&d), XdpDelta::default());
        assert_eq!(d.xdp_packets(), 16);
    }

    #[test]
    fn iperf_arguments() {
        assert!(E2eTest::TcpFwd.iperf_args().is_empty());
        assert_eq!(E2eTest::TcpRev.iperf_args(), ["-R"]);
        assert_eq!(
            E2eTest::UdpRev.iperf_args(),
            ["-u", "-b", UDP_RATE, "-l", "64", "-R"]
        );
        assert_eq!(RouterPath::Nftables.router_args(), ["--no-xdp"]);
        assert_eq!(RouterPath::Xdp.router_args(), ["--xdp", "auto"]);
        assert!(RouterPath::XdpGeneric.is_xdp() && !RouterPath::Nftables.is_xdp());
    }
}
