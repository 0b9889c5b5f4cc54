//! Control mode in the lab: a coordination server (`tailgate control serve`) in a lab host,
//! node daemons with a `[control]` config brought up with `tailgate up`, and the HA failover
//! scenario the tests and `cargo xtask bench failover` share. Everything is removed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::{lan_namespace, unique_name, wait_for, Host, Lab, Netns, Process};

/// Bound for a node to get its netmap and its peers to answer.
pub const SETTLE: Duration = Duration::from_secs(20);
/// The control server's lab host index (underlay 10.99.0.100).
pub const SERVER_INDEX: u8 = 100;

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new, empty directory under the system's temp dir.
    pub fn new(tag: &str) -> Result<TempDir> {
        let d = std::env::temp_dir().join(unique_name(tag));
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(TempDir(d))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `tailgate control serve` in a lab host. Field order: the process stops before its
/// namespace goes away.
pub struct ControlServer {
    /// The server process.
    pub process: Process,
    host: Host,
    bin: PathBuf,
    state: PathBuf,
    extra: Vec<String>,
    /// Its login URL (`tg://…`).
    pub url: String,
}

impl ControlServer {
    /// Starts the server with short keepalive and offline grace (lab timing).
    pub fn start(lab: &Lab, bin: &Path, dir: &TempDir) -> Result<ControlServer> {
        Self::start_with(lab, bin, dir, &[])
    }

    /// [`ControlServer::start`] with more `tailgate control serve` arguments.
    pub fn start_with(
        lab: &Lab,
        bin: &Path,
        dir: &TempDir,
        extra: &[&str],
    ) -> Result<ControlServer> {
        let host = lab.host(SERVER_INDEX)?;
        let state = dir.0.join("server");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (process, url) = Self::spawn(&host, bin, &state, &extra)?;
        Ok(ControlServer {
            process,
            host,
            bin: bin.to_path_buf(),
            state,
            extra,
            url,
        })
    }

    fn spawn(host: &Host, bin: &Path, state: &Path, extra: &[String]) -> Result<(Process, String)> {
        let listen = format!("{}:7443", host.underlay_v4());
        let mut cmd = host.ns.command(bin.to_str().context("binary path")?);
        cmd.args(["control", "--state-dir"])
            .arg(state)
            .args(["serve", "--listen", &listen, "--public-addr", &listen])
            .args(["--offline-grace", "1s", "--keepalive", "1s"])
            .args(extra)
            .env("RUST_LOG", "info");
        let mut process = Process::spawn("tgctl", cmd)?;
        let url = wait_for("the control server's login URL", SETTLE, || {
            process.check_running()?;
            Ok(process
                .log()
                .lines()
                .find_map(|l| l.strip_prefix("login URL: ").map(|u| u.trim().to_string())))
        })?;
        Ok((process, url))
    }

    /// Stops the server (`kill -9`, or SIGTERM and a wait) and starts it again on the same
    /// state directory and address.
    pub fn restart(&mut self, kill9: bool) -> Result<()> {
        if kill9 {
            self.process.signal(libc::SIGKILL);
        }
        self.process.stop()?;
        let (process, url) = Self::spawn(&self.host, &self.bin, &self.state, &self.extra)?;
        if url != self.url {
            bail!(
                "the login URL changed across a restart: {} → {url}",
                self.url
            );
        }
        self.process = process;
        Ok(())
    }

    /// Runs an admin command; returns stdout or fails with stderr.
    pub fn admin(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .args(["control", "--state-dir"])
            .arg(&self.state)
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "tailgate control {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A new auth key (single use unless `flags` says otherwise).
    pub fn authkey(&self, flags: &[&str]) -> Result<String> {
        let mut a = vec!["authkey", "create", "--json"];
        a.extend_from_slice(flags);
        let v: serde_json::Value = serde_json::from_str(&self.admin(&a)?)?;
        v["key"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no key in {v}"))
    }
}

/// A node daemon in control mode. Field order: the process stops before its namespace and
/// LAN hosts go away.
pub struct CtlNode {
    /// The daemon process.
    pub process: Process,
    /// Its control socket.
    pub socket: PathBuf,
    config: PathBuf,
    /// LAN hosts behind it.
    pub lans: Vec<Netns>,
    /// Its lab host.
    pub host: Host,
    bin: PathBuf,
    _state: TempDir,
}

impl CtlNode {
    /// Starts a daemon in lab host `index` with `[control]` settings `control_toml`, without
    /// XDP.
    pub fn start(lab: &Lab, bin: &Path, index: u8, control_toml: &str) -> Result<CtlNode> {
        Self::start_with(lab, bin, index, control_toml, &["--no-xdp"])
    }

    /// [`CtlNode::start`] with these `tailgate daemon` arguments (e.g. none, for the XDP
    /// fast path).
    pub fn start_with(
        lab: &Lab,
        bin: &Path,
        index: u8,
        control_toml: &str,
        daemon_args: &[&str],
    ) -> Result<CtlNode> {
        let host = lab.host(index)?;
        let ifname = unique_name("tgc");
        let state = TempDir::new("tgc-state")?;
        let config = std::env::temp_dir().join(format!("{ifname}.toml"));
        std::fs::write(
            &config,
            format!(
                "[interface]\nname = \"{ifname}\"\nlisten_port = 51820\n\n[control]\nstate_dir = \"{}\"\n{control_toml}",
                state.0.display()
            ),
        )?;
        let socket = PathBuf::from(format!("/run/tailgate/{ifname}.sock"));
        let mut cmd = host.ns.command(bin.to_str().context("binary path")?);
        cmd.arg("daemon")
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .args(daemon_args)
            .env("RUST_LOG", "info")
            // Lab daemons leave the host's resolver configuration alone.
            .env("TS_ACCEPT_DNS", "false");
        let mut process = Process::spawn(&ifname, cmd)?;
        wait_for("the daemon's control socket", SETTLE, || {
            process.check_running()?;
            Ok(socket.exists().then_some(()))
        })?;
        Ok(CtlNode {
            process,
            socket,
            config,
            lans: Vec::new(),
            host,
            bin: bin.to_path_buf(),
            _state: state,
        })
    }

    /// Runs `tailgate <args>` against this daemon; stdout, or the error output.
    pub fn cli(&self, args: &[&str]) -> std::result::Result<String, String> {
        let out = Command::new(&self.bin)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `tailgate up` against `server` with `key` and `extra` flags.
    pub fn up(
        &self,
        server: &ControlServer,
        key: &str,
        extra: &[&str],
    ) -> std::result::Result<String, String> {
        let mut a = vec!["up", "--login-server", &server.url, "--auth-key", key];
        a.extend_from_slice(extra);
        self.cli(&a)
    }

    /// `tailgate status --json`.
    pub fn status_json(&self) -> Result<serde_json::Value> {
        let s = self
            .cli(&["status", "--json"])
            .map_err(|e| anyhow!("status: {e}"))?;
        Ok(serde_json::from_str(&s)?)
    }

    /// The node's tailnet IPv4 address, once registered.
    pub fn tailnet_v4(&self) -> Result<String> {
        tailnet_v4_of(&self.status_json()?)
    }

    /// Waits until `n` peers are configured.
    pub fn wait_peers(&mut self, n: usize) -> Result<serde_json::Value> {
        wait_for(&format!("{n} peers from the netmap"), SETTLE, || {
            self.process.check_running()?;
            let st = self.status_json()?;
            let count = st["peers"].as_array().map_or(0, Vec::len);
            Ok((count == n).then_some(st))
        })
    }

    /// The name of the peer that is primary for some route, per this node's netmap.
    pub fn primary_router(&self) -> Result<Option<String>> {
        let st = self.status_json()?;
        Ok(st["peers"].as_array().and_then(|peers| {
            peers
                .iter()
                .find(|p| {
                    p["primary_routes"]
                        .as_array()
                        .is_some_and(|r| !r.is_empty())
                })
                .and_then(|p| p["name"].as_str().map(str::to_string))
        }))
    }

    /// A LAN host behind this node: `router_cidr` on the node's `lan_if`, `host_cidr` on the
    /// host, default route via the node.
    pub fn lan_host(&mut self, lan_if: &str, router_cidr: &str, host_cidr: &str) -> Result<()> {
        let ns = lan_namespace(&self.host.ns, lan_if, router_cidr, host_cidr)?;
        self.lans.push(ns);
        Ok(())
    }

    /// The namespace of LAN host `i` (in the order of [`CtlNode::lan_host`] calls).
    pub fn lan(&self, i: usize) -> Option<&Netns> {
        self.lans.get(i)
    }

    /// Pings until `dst` answers (a new peer needs a netmap and a handshake first).
    pub fn wait_ping(&self, dst: &str) -> Result<()> {
        let ns = &self.host.ns;
        wait_for(&format!("ping {dst}"), SETTLE, || {
            Ok(ns
                .exec("ping", &["-c", "1", "-W", "1", dst])
                .ok()
                .map(|_| ()))
        })
    }
}

impl Drop for CtlNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- log of {} ----\n{}",
                self.config.display(),
                self.process.log()
            );
        }
        let _ = std::fs::remove_file(&self.config);
        // A daemon killed with -9 leaves its sockets behind.
        let _ = self.process.stop();
        let _ = std::fs::remove_file(&self.socket);
        if let Some(name) = self.config.file_stem() {
            let uapi = PathBuf::from("/var/run/wireguard")
                .join(name)
                .with_extension("sock");
            let _ = std::fs::remove_file(uapi);
        }
    }
}

/// The tailnet IPv4 address in a `tailgate status --json` document.
pub fn tailnet_v4_of(status: &serde_json::Value) -> Result<String> {
    status["control"]["addresses"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .find(|x| !x.contains(':'))
        })
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no tailnet IPv4 address yet"))
}

/// Parses `ping -D` output: timestamps of replies (Unix seconds).
pub fn reply_times(out: &str) -> Vec<f64> {
    out.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| {
            let ts = l.strip_prefix('[')?.split(']').next()?;
            ts.parse().ok()
        })
        .collect()
}

/// The longest time between consecutive replies, seconds.
pub fn longest_gap(times: &[f64]) -> f64 {
    times.windows(2).map(|w| w[1] - w[0]).fold(0.0f64, f64::max)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What [`ping_around`] saw.
#[derive(Clone, Debug, Default)]
pub struct PingRun {
    /// Reply timestamps (`ping -D`, Unix seconds).
    pub times: Vec<f64>,
    /// When the event ran (Unix seconds).
    pub event_at: f64,
    /// Echo requests sent, from ping's summary.
    pub transmitted: usize,
}

impl PingRun {
    /// Replies after the event.
    pub fn replies_after(&self) -> usize {
        self.times.iter().filter(|t| **t > self.event_at).count()
    }

    /// Requests that got no reply.
    pub fn lost(&self) -> usize {
        self.transmitted.saturating_sub(self.times.len())
    }
}

/// `N packets transmitted` from ping's summary.
fn transmitted(out: &str) -> usize {
    out.lines()
        .find_map(|l| {
            l.split(" packets transmitted")
                .next()
                .filter(|_| l.contains(" packets transmitted"))
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Pings `dst` from `ns` every 10 ms for `secs` seconds and runs `event` after 2 s.
///
/// The run is a count of pings (100 per second), not a deadline, so that ping waits (up to
/// 1 s) for the replies still in flight when it sends its last request: a deadline would
/// count those as lost.
pub fn ping_around(
    ns: &Netns,
    dst: &str,
    secs: u32,
    event: impl FnOnce() -> Result<()>,
) -> Result<PingRun> {
    let mut ping = ns
        .command("ping")
        .args([
            "-D",
            "-n",
            "-i",
            "0.01",
            "-W",
            "1",
            "-c",
            &(secs * 100).to_string(),
            dst,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting ping")?;
    let stdout = ping.stdout.take().context("ping stdout")?;
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            out.push_str(&l);
            out.push('\n');
        }
        out
    });
    std::thread::sleep(Duration::from_secs(2));
    let at = unix_now();
    let outcome = event();
    let deadline = Instant::now() + Duration::from_secs(u64::from(secs) * 2 + 10);
    while ping.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = ping.kill();
    let _ = ping.wait();
    let out = reader.join().unwrap_or_default();
    outcome?;
    Ok(PingRun {
        times: reply_times(&out),
        event_at: at,
        transmitted: transmitted(&out),
    })
}

/// How the primary router fails in an HA trial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// `kill -9` of its daemon.
    Kill9,
    /// Its WAN link (the underlay `eth0`) goes down.
    WanDown,
    /// Its LAN stops answering (the LAN host drops everything), so its LAN health probe
    /// fails while the router itself stays up.
    LanProbe,
}

impl Failure {
    /// Every kind.
    pub const ALL: [Failure; 3] = [Failure::Kill9, Failure::WanDown, Failure::LanProbe];

    /// A short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Failure::Kill9 => "kill -9 of the primary",
            Failure::WanDown => "primary's WAN link down",
            Failure::LanProbe => "primary's LAN probe fails",
        }
    }

    fn inflict(self, r1: &CtlNode) -> Result<()> {
        match self {
            Failure::Kill9 => r1.process.signal(libc::SIGKILL),
            Failure::WanDown => {
                r1.host.ns.ip(&["link", "set", "eth0", "down"])?;
            }
            Failure::LanProbe => {
                let lan = r1.lans.first().context("r1 has no LAN host")?;
                lan.exec("nft", &["add", "table", "inet", "dead"])?;
                lan.exec(
                    "nft",
                    &[
                        "add", "chain", "inet", "dead", "input", "{", "type", "filter", "hook",
                        "input", "priority", "0", ";", "policy", "drop", ";", "}",
                    ],
                )?;
            }
        }
        Ok(())
    }
}

/// The outcome of one HA trial.
#[derive(Clone, Debug)]
pub struct FailoverTrial {
    /// Longest time between two replies, seconds.
    pub gap: f64,
    /// Replies after the failure.
    pub replies_after: usize,
    /// The primary in the client's netmap afterwards (the server's confirmation).
    pub primary_after: Option<String>,
    /// Log of the standby, for diagnosis.
    pub standby_log: String,
}

/// Two routers for 10.0.50.0/24 (r1 with priority 10 preferred, r2 standby, both with a LAN
/// health probe), a client pinging a LAN host every 10 ms; after 2 s r1 fails as `failure`
/// says. `bin` is the tailgate binary.
pub fn ha_failover_trial(bin: &Path, failure: Failure) -> Result<FailoverTrial> {
    let lab = Lab::new()?;
    let dir = TempDir::new("tgctl")?;
    let server = ControlServer::start(&lab, bin, &dir)?;
    let key = server.authkey(&["--reusable"])?;
    let probe = "health_probe = \"10.0.50.5\"\n";
    let mut r1 = CtlNode::start(&lab, bin, 1, probe)?;
    let mut r2 = CtlNode::start(&lab, bin, 2, probe)?;
    let mut client = CtlNode::start(&lab, bin, 3, "")?;
    // The same LAN address answers behind both routers.
    r1.lan_host("lan0", "10.0.50.1/24", "10.0.50.5/24")?;
    r2.lan_host("lan0", "10.0.50.1/24", "10.0.50.5/24")?;
    let adv = ["--advertise-routes", "10.0.50.0/24"];
    let up = |n: &CtlNode, extra: &[&str]| {
        n.up(&server, &key, extra)
            .map_err(|e| anyhow!("tailgate up {extra:?}: {e}"))
    };
    up(
        &r1,
        &[&["--hostname", "r1", "--route-priority", "10"][..], &adv].concat(),
    )?;
    up(&r2, &[&["--hostname", "r2"][..], &adv].concat())?;
    up(&client, &["--hostname", "cl", "--accept-routes"])?;
    server.admin(&["routes", "approve", "r1", "10.0.50.0/24"])?;
    server.admin(&["routes", "approve", "r2", "10.0.50.0/24"])?;
    client.wait_peers(2)?;
    client.wait_ping("10.0.50.5")?;
    let primary = wait_for("a primary router", SETTLE, || client.primary_router())?;
    if primary != "r1" {
        bail!("r1 (priority 10) should be primary, not {primary}");
    }
    let run = ping_around(&client.host.ns, "10.0.50.5", 10, || failure.inflict(&r1))?;
    let primary_after = wait_for("r2 as primary in the netmap", SETTLE, || {
        Ok(client.primary_router()?.filter(|n| n == "r2"))
    })
    .ok();
    let trial = FailoverTrial {
        gap: longest_gap(&run.times),
        replies_after: run.replies_after(),
        primary_after,
        standby_log: r2.process.log(),
    };
    let _ = (&mut r1, &mut r2);
    Ok(trial)
}
