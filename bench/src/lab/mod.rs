//! A lab of network namespaces joined by a bridge, with WireGuard nodes of several
//! implementations (tailgate, wireguard-go, boringtun-cli) as real processes.
//!
//! Underlay: host N has `10.99.0.N/24` and `fd99::N/64` on `eth0`, bridged in a hub namespace.
//! Tunnel: node N has `100.64.0.N/32` and `fd7a:115c:a1e0::N/128`.
//! Everything (processes, namespaces, links, XDP programs) is removed on drop.

pub mod capture;
pub mod control;
pub mod nat;
pub mod netns;
pub mod node;
pub mod process;
pub mod proxy_client;
pub mod relay;
pub mod upnp;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use anyhow::Result;

pub use netns::{ip, run, unique_name, veth, Netns};
pub use node::{Keypair, Kind, Node, PeerSpec};
pub use process::{wait_for, Process};

/// A namespace on the lab's underlay network.
pub struct Host {
    /// The host's namespace.
    pub ns: Netns,
    /// Index N: addresses end in N.
    pub index: u8,
}

impl Host {
    /// Underlay IPv4 address.
    pub fn underlay_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, 0, self.index)
    }

    /// Underlay IPv6 address.
    pub fn underlay_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, u16::from(self.index))
    }
}

/// Namespaces on one bridged underlay, and the nodes running in them.
pub struct Lab {
    /// Nodes, stopped before the namespaces go away.
    pub nodes: Vec<Node>,
    /// Plain hosts on the nodes' LANs (not on the underlay).
    pub lan_hosts: Vec<Netns>,
    hub: Netns,
    bridge: String,
}

impl Lab {
    /// A hub namespace with an empty bridge.
    pub fn new() -> Result<Lab> {
        let hub = Netns::new("tghub")?;
        let bridge = "br0".to_string();
        hub.ip(&["link", "add", &bridge, "type", "bridge"])?;
        hub.ip(&["link", "set", &bridge, "up"])?;
        Ok(Lab {
            nodes: Vec::new(),
            lan_hosts: Vec::new(),
            hub,
            bridge,
        })
    }

    /// A new namespace attached to the bridge as host `index` (1–254).
    pub fn host(&self, index: u8) -> Result<Host> {
        let ns = Netns::new("tgh")?;
        let host = Host { ns, index };
        let hub_if = unique_name("tgp");
        veth(
            &host.ns,
            "eth0",
            &[
                &format!("{}/24", host.underlay_v4()),
                &format!("{}/64", host.underlay_v6()),
            ],
            &self.hub,
            &hub_if,
            &[],
        )?;
        self.hub
            .ip(&["link", "set", &hub_if, "master", &self.bridge])?;
        // veth has GRO off by default, unlike real NICs; UDP GRO needs it.
        host.ns.exec("ethtool", &["-K", "eth0", "gro", "on"])?;
        Ok(host)
    }

    /// Starts a node of `kind` as host `index` with the given peers; returns its position.
    pub fn start(
        &mut self,
        kind: Kind,
        index: u8,
        keys: Keypair,
        peers: &[PeerSpec],
    ) -> Result<usize> {
        let host = self.host(index)?;
        let node = Node::start(kind, host, keys, peers)?;
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }
}

impl Lab {
    /// [`Lab::start`] with extra TOML for a tailgate node's `[interface]` table.
    pub fn start_with(
        &mut self,
        kind: Kind,
        index: u8,
        keys: Keypair,
        peers: &[PeerSpec],
        interface_toml: &str,
    ) -> Result<usize> {
        let host = self.host(index)?;
        let node = Node::start_with(kind, host, keys, peers, interface_toml)?;
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    /// A host on a LAN behind node `node`: a new namespace joined to the node's namespace by
    /// a veth (`lan_if` on the node side with `router_cidr`, `eth1` on the host with
    /// `host_cidr`), with a default route via the router. Returns its position in
    /// `lan_hosts`.
    pub fn lan_host(
        &mut self,
        node: usize,
        lan_if: &str,
        router_cidr: &str,
        host_cidr: &str,
    ) -> Result<usize> {
        let ns = lan_namespace(&self.nodes[node].host.ns, lan_if, router_cidr, host_cidr)?;
        self.lan_hosts.push(ns);
        Ok(self.lan_hosts.len() - 1)
    }
}

/// A new namespace joined to `router` by a veth (`lan_if` on the router side with
/// `router_cidr`, `eth1` in the new namespace with `host_cidr`), with a default route via the
/// router.
pub fn lan_namespace(
    router: &Netns,
    lan_if: &str,
    router_cidr: &str,
    host_cidr: &str,
) -> Result<Netns> {
    let ns = Netns::new("tglan")?;
    veth(router, lan_if, &[router_cidr], &ns, "eth1", &[host_cidr])?;
    let gateway = router_cidr.split('/').next().unwrap_or(router_cidr);
    ns.ip(&["route", "add", "default", "via", gateway])?;
    Ok(ns)
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Stop processes before their namespaces disappear.
        self.nodes.clear();
        self.lan_hosts.clear();
    }
}

/// Whether the process runs as root (network labs need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A one-shot `iperf3` server (`-s -1`) on `port` in `ns`, returned once it listens (at most
/// 5 s); its log is discarded when it is dropped.
pub fn iperf3_server(ns: &Netns, port: u16) -> Result<Process> {
    let port_s = port.to_string();
    let mut server = Process::spawn("iperf3s", {
        let mut c = ns.command("iperf3");
        c.args(["-s", "-1", "-p", &port_s]);
        c
    })?;
    server.discard_log_on_drop();
    let filter = format!("sport = :{port}");
    wait_for(
        "the iperf3 server to listen",
        Duration::from_secs(5),
        || {
            server.check_running()?;
            Ok((!ns.exec("ss", &["-Hltn", &filter])?.trim().is_empty()).then_some(()))
        },
    )?;
    Ok(server)
}

/// The release `tailgate` binary for the benchmark smoke tests: `TAILGATE_BIN`, else the
/// workspace's `target/release/tailgate` (what `cargo xtask build` makes); why not, otherwise.
pub fn tailgate_bin() -> std::result::Result<std::path::PathBuf, String> {
    if let Some(p) = std::env::var_os("TAILGATE_BIN") {
        let p = std::path::PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("TAILGATE_BIN={} is not a file", p.display()))
        };
    }
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/tailgate");
    if p.is_file() {
        Ok(p)
    } else {
        Err("no tailgate binary: set TAILGATE_BIN or run `cargo xtask build`".into())
    }
}

/// Pins the calling thread to `cpu`; nothing on a machine without that CPU.
pub fn pin_current_thread(cpu: usize) {
    pin_thread(0, cpu);
}

/// Pins thread `tid` (0: the calling thread) to `cpu`, if the machine has that CPU; false when
/// it does not or the kernel refused.
pub fn pin_thread(tid: libc::pid_t, cpu: usize) -> bool {
    if !std::thread::available_parallelism().is_ok_and(|n| n.get() > cpu) {
        return false;
    }
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it (cpu < CPU_SETSIZE), and
    // sched_setaffinity only reads the set and changes thread `tid`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}
