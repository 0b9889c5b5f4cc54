//! miniupnpd (the nftables build) in a lab NAT box: UPnP IGD, NAT-PMP and PCP for the node
//! behind it, so port-mapping clients can be tested against a real server.
//!
//! miniupnpd 2.3 refuses to map ports when its external address is private, and the lab
//! underlay is `10.99.0.0/24`; so the box also gets a "public" address `11.99.0.<index>`
//! (a range that never leaves the lab's namespaces) on its outside interface, declared as
//! `ext_ip`. Underlay hosts reach it with [`route_to_public`]. The box must be made with
//! [`super::nat::NatKind::Upnp`] so the forwarding filter lets the DNATed packets in.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result};

use super::control::TempDir;
use super::nat::NatBox;
use super::{wait_for, Host, Process};

/// The miniupnpd binary (Debian's `miniupnpd-nftables`).
pub const MINIUPNPD: &str = "/usr/sbin/miniupnpd";

/// The nftables table miniupnpd is told to use (its filter and NAT chains live there).
pub const TABLE: &str = "tgupnp";

/// The public address of NAT box `index`: `11.99.0.<index>`.
pub fn public_v4(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(11, 99, 0, index)
}

/// Makes the lab's public addresses (`11.99.0.0/24`) reachable from an underlay host: they
/// are on the same link as the underlay.
pub fn route_to_public(host: &Host) -> Result<()> {
    host.ns
        .ip(&["route", "add", "11.99.0.0/24", "dev", "eth0"])
        .map(drop)
}

/// A running miniupnpd in a NAT box: stopped, its nftables table deleted and its files
/// removed on drop. Drop it before the box.
pub struct Miniupnpd {
    process: Process,
    ns: String,
    public: Ipv4Addr,
    dir: TempDir,
    /// The HTTP port it serves the device description and SOAP on.
    pub http_port: u16,
}

impl Miniupnpd {
    /// Starts miniupnpd in `nat` (outside `eth0`, LAN `lan0`), serving UPnP IGD, NAT-PMP and
    /// PCP to `192.168.0.0/16` for ports 1024–65535 (secure mode: clients map only to
    /// themselves). Returns once it listens (at most 5 s).
    pub fn start(nat: &NatBox) -> Result<Miniupnpd> {
        let ns = &nat.host.ns;
        let public = public_v4(nat.host.index);
        ns.ip(&[
            "addr",
            "add",
            &format!("{public}/24"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        // The chains miniupnpd fills (what /etc/miniupnpd/nft_init.sh makes, but with the
        // forward policy left at accept so the box still routes everything else, and in a
        // table of our own).
        let rules = format!(
            "table inet {TABLE} {{\n\
               chain forward {{ type filter hook forward priority filter; policy accept; jump miniupnpd; }}\n\
               chain miniupnpd {{ }}\n\
               chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; jump prerouting_miniupnpd; }}\n\
               chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; jump postrouting_miniupnpd; }}\n\
               chain prerouting_miniupnpd {{ }}\n\
               chain postrouting_miniupnpd {{ }}\n\
             }}\n"
        );
        let dir = TempDir::new("tgupnpd")?;
        let nft = dir.0.join("init.nft");
        std::fs::write(&nft, rules).context("writing the miniupnpd nftables rules")?;
        ns.exec("nft", &["-f", path_str(&nft)?])?;
        let conf = dir.0.join("miniupnpd.conf");
        let leases = dir.0.join("leases");
        std::fs::write(
            &conf,
            format!(
                "ext_ifname=eth0\n\
                 ext_ip={public}\n\
                 listening_ip=lan0\n\
                 http_port=0\n\
                 enable_natpmp=yes\n\
                 enable_upnp=yes\n\
                 secure_mode=yes\n\
                 system_uptime=yes\n\
                 uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b\n\
                 lease_file={}\n\
                 upnp_table_name={TABLE}\n\
                 upnp_nat_table_name={TABLE}\n\
                 allow 1024-65535 192.168.0.0/16 1024-65535\n\
                 deny 0-65535 0.0.0.0/0 0-65535\n",
                leases.display()
            ),
        )
        .context("writing miniupnpd.conf")?;
        let pid = dir.0.join("miniupnpd.pid");
        let mut cmd = ns.command(MINIUPNPD);
        cmd.args(["-d", "-f", path_str(&conf)?, "-P", path_str(&pid)?]);
        let mut process = Process::spawn("miniupnpd", cmd)?;
        process.discard_log_on_drop();
        let http_port = wait_for("miniupnpd to listen", Duration::from_secs(5), || {
            process.check_running()?;
            let log = process.log();
            if !log.contains("Listening for NAT-PMP/PCP traffic on port 5351") {
                return Ok(None);
            }
            Ok(log
                .lines()
                .find_map(|l| l.split("HTTP listening on port ").nth(1))
                .and_then(|p| p.trim().parse().ok()))
        })
        .with_context(|| format!("miniupnpd log:\n{}", process.log()))?;
        Ok(Miniupnpd {
            process,
            ns: ns.name().to_string(),
            public,
            dir,
            http_port,
        })
    }

    /// The box's public address (what the protocols report as the external address).
    pub fn public_ip(&self) -> Ipv4Addr {
        self.public
    }

    /// miniupnpd's output so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The DNAT rules miniupnpd has installed (`nft list chain … prerouting_miniupnpd`).
    pub fn dnat_rules(&self) -> Result<String> {
        super::run(std::process::Command::new("ip").args([
            "netns",
            "exec",
            &self.ns,
            "nft",
            "list",
            "chain",
            "inet",
            TABLE,
            "prerouting_miniupnpd",
        ]))
    }

    /// Whether a DNAT rule for UDP external port `port` is installed.
    pub fn maps_udp_port(&self, port: u16) -> Result<bool> {
        let rules = self.dnat_rules()?;
        Ok(rules
            .lines()
            .any(|l| l.contains(&format!("dport {port} ")) && l.contains("dnat")))
    }

    /// The lease file's content (UPnP leases; empty when there are none).
    pub fn leases(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("leases")).unwrap_or_default()
    }
}

fn path_str(p: &std::path::Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 temp path")
}

impl Drop for Miniupnpd {
    fn drop(&mut self) {
        let _ = self.process.stop();
        let _ = std::process::Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "nft", "delete", "table", "inet", TABLE,
            ])
            .output();
    }
}
