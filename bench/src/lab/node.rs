//! WireGuard nodes of several implementations, each in its own lab host.

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use super::netns::{run, unique_name};
use super::process::{wait_for, Process};
use super::Host;

/// Which WireGuard implementation a node runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `tailgate daemon` from this binary, with extra daemon arguments.
    Tailgate {
        /// Path of the `tailgate` binary.
        bin: PathBuf,
        /// Extra arguments for `tailgate daemon`.
        args: Vec<String>,
    },
    /// Debian's `wireguard-go`.
    WireguardGo,
    /// `boringtun-cli`.
    Boringtun,
}

impl Kind {
    /// A tailgate node with default options.
    pub fn tailgate(bin: impl Into<PathBuf>) -> Kind {
        Kind::Tailgate {
            bin: bin.into(),
            args: Vec::new(),
        }
    }

    /// Short label for logs and tables.
    pub fn label(&self) -> &'static str {
        match self {
            Kind::Tailgate { .. } => "tailgate",
            Kind::WireguardGo => "wireguard-go",
            Kind::Boringtun => "boringtun",
        }
    }
}

/// A WireGuard key pair in base64, made with `wg genkey` / `wg pubkey`.
#[derive(Debug, Clone)]
pub struct Keypair {
    /// Private key.
    pub private: String,
    /// Public key.
    pub public: String,
}

impl Keypair {
    /// Generates a key pair with the `wg` tool.
    pub fn generate() -> Result<Keypair> {
        let private = run(Command::new("wg").arg("genkey"))?.trim().to_string();
        let mut child = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("running wg pubkey")?;
        child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("no stdin"))?
            .write_all(private.as_bytes())?;
        let out = child.wait_with_output()?;
        let public = String::from_utf8(out.stdout)?.trim().to_string();
        Ok(Keypair { private, public })
    }
}

/// A peer as another node should configure it.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    /// Public key (base64).
    pub public_key: String,
    /// Underlay endpoint, if the node should initiate.
    pub endpoint: Option<SocketAddr>,
    /// Allowed IPs (CIDRs).
    pub allowed_ips: Vec<String>,
    /// Persistent keepalive seconds.
    pub keepalive: Option<u16>,
    /// Extra TOML lines for a tailgate `[[peer]]` table (name, routes, exit_node).
    pub extra_toml: String,
}

/// UDP port every lab node listens on.
pub const LISTEN_PORT: u16 = 51820;

/// A running WireGuard node.
pub struct Node {
    process: Process,
    /// The implementation.
    pub kind: Kind,
    /// WireGuard interface name (unique on the machine: UAPI sockets share one directory).
    pub ifname: String,
    /// Key pair.
    pub keys: Keypair,
    /// tailgate control socket (tailgate nodes only).
    pub control_socket: Option<PathBuf>,
    config_file: Option<PathBuf>,
    /// The lab host (namespace) the node runs in; dropped after the process.
    pub host: Host,
}

impl Node {
    /// Tunnel IPv4 address.
    pub fn tunnel_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(100, 64, 0, self.host.index)
    }

    /// Tunnel IPv6 address.
    pub fn tunnel_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd7a,
            0x115c,
            0xa1e0,
            0,
            0,
            0,
            0,
            u16::from(self.host.index),
        )
    }

    /// Underlay endpoint of the node's WireGuard socket.
    pub fn endpoint(&self) -> SocketAddr {
        SocketAddr::new(self.host.underlay_v4().into(), LISTEN_PORT)
    }

    /// How another node configures this one, with or without its endpoint.
    pub fn as_peer(&self, with_endpoint: bool) -> PeerSpec {
        peer_spec(
            &self.keys,
            self.host.index,
            with_endpoint.then(|| self.endpoint()),
        )
    }

    /// Starts `kind` in `host` with `peers`, and waits until it is ready.
    pub fn start(kind: Kind, host: Host, keys: Keypair, peers: &[PeerSpec]) -> Result<Node> {
        Self::start_with(kind, host, keys, peers, "")
    }

    /// [`Node::start`] with extra TOML for a tailgate node's `[interface]` table (routing
    /// settings; may end with top-level tables such as `[[via]]`).
    pub fn start_with(
        kind: Kind,
        host: Host,
        keys: Keypair,
        peers: &[PeerSpec],
        interface_toml: &str,
    ) -> Result<Node> {
        let ifname = unique_name(match kind {
            Kind::Tailgate { .. } => "tg",
            Kind::WireguardGo => "wgo",
            Kind::Boringtun => "btn",
        });
        let v4 = Ipv4Addr::new(100, 64, 0, host.index);
        let v6 = Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, u16::from(host.index));
        let node = match &kind {
            Kind::Tailgate { bin, args } => {
                let config = std::env::temp_dir().join(format!("{ifname}.toml"));
                std::fs::write(
                    &config,
                    tailgate_config(&ifname, &keys, v4, v6, peers, interface_toml),
                )?;
                let socket = PathBuf::from(format!("/run/tailgate/{ifname}.sock"));
                let cmd = tailgate_daemon(&host, bin, args, &config, &socket);
                let process = Process::spawn(&ifname, cmd)?;
                Node {
                    process,
                    kind: kind.clone(),
                    ifname,
                    keys,
                    control_socket: Some(socket),
                    config_file: Some(config),
                    host,
                }
            }
            Kind::WireguardGo | Kind::Boringtun => {
                let mut cmd = if kind == Kind::WireguardGo {
                    let mut c = host.ns.command("wireguard-go");
                    c.args(["-f", &ifname]);
                    c
                } else {
                    let mut c = host.ns.command("boringtun-cli");
                    c.args(["-f", "--disable-drop-privileges", &ifname]);
                    c
                };
                cmd.env("LOG_LEVEL", "error");
                let process = Process::spawn(&ifname, cmd)?;
                let mut node = Node {
                    process,
                    kind: kind.clone(),
                    ifname,
                    keys,
                    control_socket: None,
                    config_file: None,
                    host,
                };
                node.configure_userspace_peer(v4, v6, peers)?;
                node
            }
        };
        let mut node = node;
        node.wait_ready()?;
        Ok(node)
    }

    fn uapi_socket(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/wireguard/{}.sock", self.ifname))
    }

    fn wait_ready(&mut self) -> Result<()> {
        let sock = self.uapi_socket();
        let process = &mut self.process;
        wait_for(
            &format!("{} to come up", self.ifname),
            Duration::from_secs(20),
            || {
                process.check_running()?;
                Ok(sock.exists().then_some(()))
            },
        )
        .map_err(|e| e.context(format!("log of {}:\n{}", self.ifname, self.process.log())))?;
        if let Some(control) = &self.control_socket {
            let process = &mut self.process;
            wait_for("tailgate control socket", Duration::from_secs(10), || {
                process.check_running()?;
                Ok(control.exists().then_some(()))
            })?;
        }
        Ok(())
    }

    /// Sets keys, peers, addresses and routes on a wireguard-go/boringtun interface.
    fn configure_userspace_peer(
        &mut self,
        v4: Ipv4Addr,
        v6: Ipv6Addr,
        peers: &[PeerSpec],
    ) -> Result<()> {
        let sock = self.uapi_socket();
        let process = &mut self.process;
        wait_for(
            &format!("{} UAPI socket", self.ifname),
            Duration::from_secs(20),
            || {
                process.check_running()?;
                Ok(sock.exists().then_some(()))
            },
        )?;
        let key_file = std::env::temp_dir().join(format!("{}.key", self.ifname));
        std::fs::write(&key_file, &self.keys.private)?;
        let port = LISTEN_PORT.to_string();
        self.wg(&[
            "set",
            &self.ifname,
            "private-key",
            &key_file.to_string_lossy(),
            "listen-port",
            &port,
        ])?;
        let _ = std::fs::remove_file(&key_file);
        let ns = &self.host.ns;
        ns.ip(&["addr", "add", &format!("{v4}/32"), "dev", &self.ifname])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("{v6}/128"),
            "dev",
            &self.ifname,
            "nodad",
        ])?;
        ns.ip(&["link", "set", &self.ifname, "mtu", "1280", "up"])?;
        for p in peers {
            self.add_peer_with_wg(p)?;
        }
        Ok(())
    }

    /// Adds a peer at runtime with `wg set`, and routes its allowed IPs to the interface.
    pub fn add_peer_with_wg(&self, p: &PeerSpec) -> Result<()> {
        let mut args: Vec<String> = vec![
            "set".into(),
            self.ifname.clone(),
            "peer".into(),
            p.public_key.clone(),
        ];
        args.push("allowed-ips".into());
        args.push(p.allowed_ips.join(","));
        if let Some(ep) = p.endpoint {
            args.push("endpoint".into());
            args.push(ep.to_string());
        }
        if let Some(k) = p.keepalive {
            args.push("persistent-keepalive".into());
            args.push(k.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.wg(&args)?;
        if !matches!(self.kind, Kind::Tailgate { .. }) {
            for net in &p.allowed_ips {
                self.host
                    .ns
                    .ip(&["route", "replace", net, "dev", &self.ifname])?;
            }
        }
        Ok(())
    }

    /// Runs `wg ARGS…` in the node's namespace.
    pub fn wg(&self, args: &[&str]) -> Result<String> {
        self.host.ns.exec("wg", args)
    }

    /// Runs a program in the node's namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        self.host.ns.exec(program, args)
    }

    /// `ping -c COUNT` to `dst` from the node's namespace, bounded to a few seconds.
    pub fn ping(&self, dst: &str, count: u32) -> Result<String> {
        let count = count.to_string();
        self.exec(
            "ping",
            &["-c", &count, "-i", "0.2", "-W", "2", "-w", "10", dst],
        )
    }

    /// `tailgate status [--json]` against this node (tailgate nodes only).
    pub fn tailgate_status(&self, json: bool) -> Result<String> {
        let (Kind::Tailgate { bin, .. }, Some(sock)) = (&self.kind, &self.control_socket) else {
            return Err(anyhow!("{} is not a tailgate node", self.ifname));
        };
        let mut cmd = Command::new(bin);
        cmd.arg("--socket").arg(sock).arg("status");
        if json {
            cmd.arg("--json");
        }
        run(&mut cmd)
    }

    /// Fails with the node's log if its process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        self.process.check_running()
    }

    /// The id of the node's process (the daemon itself: `ip netns exec` execs it), while it
    /// has not been stopped.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The node's process output so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Kills a tailgate node's daemon with SIGKILL (no teardown: its NAT rules, routes and
    /// socket files stay behind), passes its configuration file through `edit`, and starts
    /// the daemon again in the same namespace with the same arguments. Returns once the new
    /// daemon answers on its control socket.
    pub fn kill_and_restart(&mut self, edit: impl FnOnce(String) -> String) -> Result<()> {
        let (Kind::Tailgate { bin, args }, Some(config), Some(socket)) =
            (&self.kind, &self.config_file, &self.control_socket)
        else {
            return Err(anyhow!("{} is not a tailgate node", self.ifname));
        };
        self.process.signal(libc::SIGKILL);
        // Reaps the killed process (bounded); its exit status is SIGKILL's, not a clean one.
        let _ = self.process.stop();
        let text = std::fs::read_to_string(config)
            .with_context(|| format!("reading {}", config.display()))?;
        std::fs::write(config, edit(text))
            .with_context(|| format!("writing {}", config.display()))?;
        let cmd = tailgate_daemon(&self.host, bin, args, config, socket);
        self.process = Process::spawn(&self.ifname, cmd)?;
        // The killed daemon's socket files are still there: wait for an answer, not a file.
        let mut status = Command::new(bin);
        status.arg("--socket").arg(socket).arg("status");
        let process = &mut self.process;
        wait_for(
            "the restarted daemon's control socket",
            Duration::from_secs(20),
            || {
                process.check_running()?;
                Ok(run(&mut status).ok())
            },
        )
        .map_err(|e| e.context(format!("log of {}:\n{}", self.ifname, self.process.log())))?;
        Ok(())
    }

    /// Stops the node with SIGTERM; true if it exited cleanly.
    pub fn stop(&mut self) -> Result<bool> {
        self.process.stop()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.process.stop();
        if let Some(f) = &self.config_file {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// The command that runs `tailgate daemon` with `config` and control `socket` in `host`.
fn tailgate_daemon(
    host: &Host,
    bin: &std::path::Path,
    args: &[String],
    config: &std::path::Path,
    socket: &std::path::Path,
) -> std::process::Command {
    let mut cmd = host.ns.command(&bin.to_string_lossy());
    cmd.arg("daemon")
        .arg("--config")
        .arg(config)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env("RUST_LOG", "info")
        // Lab daemons leave the host's resolver configuration alone.
        .env("TS_ACCEPT_DNS", "false");
    cmd
}

/// The peer entry for node `index` with `keys`.
pub fn peer_spec(keys: &Keypair, index: u8, endpoint: Option<SocketAddr>) -> PeerSpec {
    PeerSpec {
        public_key: keys.public.clone(),
        endpoint,
        allowed_ips: vec![
            format!("100.64.0.{index}/32"),
            format!("fd7a:115c:a1e0::{index:x}/128"),
        ],
        keepalive: None,
        extra_toml: String::new(),
    }
}

fn tailgate_config(
    ifname: &str,
    keys: &Keypair,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    peers: &[PeerSpec],
    interface_toml: &str,
) -> String {
    let mut s = format!(
        "[interface]\nname = \"{ifname}\"\nprivate_key = \"{}\"\nlisten_port = {LISTEN_PORT}\n\
         address = [\"{v4}/32\", \"{v6}/128\"]\nxdp_interface = \"eth0\"\nxdp = \"native\"\n{interface_toml}\n",
        keys.private
    );
    for p in peers {
        s.push_str(&format!("\n[[peer]]\npublic_key = \"{}\"\n", p.public_key));
        if let Some(ep) = p.endpoint {
            s.push_str(&format!("endpoint = \"{ep}\"\n"));
        }
        let ips: Vec<String> = p.allowed_ips.iter().map(|a| format!("\"{a}\"")).collect();
        s.push_str(&format!("allowed_ips = [{}]\n", ips.join(", ")));
        if let Some(k) = p.keepalive {
            s.push_str(&format!("persistent_keepalive = {k}\n"));
        }
        s.push_str(&p.extra_toml);
        s.push('\n');
    }
    s
}
