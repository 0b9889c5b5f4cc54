//! The iptables NAT backend, for hosts without `nft` (Synology DSM ships iptables only): the
//! same masquerade as [`super::nft`], in a chain of our own in the `nat` table
//! (`TAILGATE-<ifname>`, jumped to from `POSTROUTING`), replaced with `iptables-restore
//! --noflush` and deleted on shutdown. IPv6 rules go through `ip6tables` when it exists.
//! iptables cannot negate a set of addresses, so the destinations exit traffic must not NAT
//! (the advertised routes) get `RETURN` rules ahead of the masquerade. A daemon that is not
//! root and cannot open iptables' lock file gives iptables one of its own.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, Context, Result};
use ipnet::IpNet;

use super::nft::{MASQUERADE_PORTS, TAILNET_V4, TAILNET_V6};
use crate::prefs::RoutingPrefs;

/// Name of our chain in the `nat` table for interface `ifname` (at most 24 characters, well
/// under iptables' 28).
pub fn chain_name(ifname: &str) -> String {
    format!(
        "TAILGATE-{}",
        ifname.replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "_")
    )
}

/// The rules of our chain, per address family, each as the arguments after `-A <chain>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// IPv4 rules (`iptables`).
    pub v4: Vec<String>,
    /// IPv6 rules (`ip6tables`).
    pub v6: Vec<String>,
}

/// The masquerade rules for packets matching `cond`: TCP and UDP with their ports kept clear
/// of the XDP fast path's range, then everything else (`MASQUERADE` ends the chain walk).
fn masquerade(cond: &str) -> [String; 3] {
    [
        format!("{cond} -p tcp -j MASQUERADE --to-ports {MASQUERADE_PORTS}"),
        format!("{cond} -p udp -j MASQUERADE --to-ports {MASQUERADE_PORTS}"),
        format!("{cond} -j MASQUERADE"),
    ]
}

/// The rules for `prefs` on TUN `ifname`, with the conditions of [`super::nft::ruleset`]:
/// everything from the tailnet when SNAT is on; with SNAT off, only 4via6 traffic and exit
/// traffic to anything but the advertised routes. Empty when nothing needs NAT.
pub fn rules(ifname: &str, prefs: &RoutingPrefs) -> Rules {
    let mut r = Rules::default();
    if !prefs.is_router() {
        return r;
    }
    let v4 = format!("! -o {ifname} -s {TAILNET_V4}");
    let v6 = format!("! -o {ifname} -s {TAILNET_V6}");
    if prefs.snat_subnet_routes {
        r.v4.extend(masquerade(&v4));
        r.v6.extend(masquerade(&v6));
        return r;
    }
    // 4via6 sites are IPv4 LANs.
    for lan in prefs.via.iter().flat_map(|v| v.routes.iter()) {
        r.v4.extend(masquerade(&format!("{v4} -d {lan}")));
    }
    if prefs.advertise_exit_node {
        for route in &prefs.advertise_routes {
            match route {
                IpNet::V4(_) => r.v4.push(format!("{v4} -d {route} -j RETURN")),
                IpNet::V6(_) => r.v6.push(format!("{v6} -d {route} -j RETURN")),
            }
        }
        r.v4.extend(masquerade(&v4));
        r.v6.extend(masquerade(&v6));
    }
    r
}

/// The `iptables-restore --noflush` input that replaces the rules of `chain` (declaring an
/// existing chain flushes it) with `rules`, adding the jump from `POSTROUTING` if `add_jump`.
pub fn restore_input(chain: &str, rules: &[String], add_jump: bool) -> String {
    let mut s = format!("*nat\n:{chain} - [0:0]\n");
    for r in rules {
        s.push_str(&format!("-A {chain} {r}\n"));
    }
    if add_jump {
        s.push_str(&format!("-A POSTROUTING -j {chain}\n"));
    }
    s.push_str("COMMIT\n");
    s
}

/// The programs of one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    /// `iptables` or `ip6tables`.
    pub tool: PathBuf,
    /// `iptables-restore` or `ip6tables-restore`, if installed (without it the rules are
    /// added one by one).
    pub restore: Option<PathBuf>,
}

/// iptables' lock file (legacy iptables takes it for every change).
const XTABLES_LOCK: &str = "/run/xtables.lock";

/// A lock file of our own when this process cannot open iptables' (a non-root daemon with
/// file capabilities: the lock is root's, mode 0600), passed as `XTABLES_LOCKFILE`;
/// otherwise iptables would refuse with "can't open lock file".
fn private_lock() -> Option<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    if std::env::var_os("XTABLES_LOCKFILE").is_some() {
        return None;
    }
    // Opened as iptables opens it: read-only, created if missing.
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CREAT)
        .mode(0o600)
        .open(XTABLES_LOCK)
        .is_ok();
    (!usable).then(|| std::env::temp_dir().join("tailgate-xtables.lock"))
}

/// `program` with iptables' lock file set up (see [`private_lock`]).
fn command(program: &Path) -> Command {
    let mut c = Command::new(program);
    if let Some(lock) = private_lock() {
        c.env("XTABLES_LOCKFILE", lock);
    }
    c
}

impl Family {
    fn name(&self) -> String {
        self.tool
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.tool.display().to_string())
    }

    /// Runs `<tool> -t nat ARGS`.
    fn nat(&self, args: &[&str]) -> Result<()> {
        let out = command(&self.tool)
            .args(["-w", "-t", "nat"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.tool.display()))?;
        if !out.status.success() {
            return Err(anyhow!(
                "{} -t nat {}: {}",
                self.name(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }

    fn has_chain(&self, chain: &str) -> bool {
        self.nat(&["-S", chain]).is_ok()
    }

    fn has_jump(&self, chain: &str) -> bool {
        self.nat(&["-C", "POSTROUTING", "-j", chain]).is_ok()
    }

    /// Replaces the rules of `chain` with `rules` and makes sure `POSTROUTING` jumps to it.
    fn install(&self, chain: &str, rules: &[String]) -> Result<()> {
        let add_jump = !self.has_jump(chain);
        let Some(restore) = &self.restore else {
            if !self.has_chain(chain) {
                self.nat(&["-N", chain])?;
            }
            self.nat(&["-F", chain])?;
            for r in rules {
                let mut args = vec!["-A", chain];
                args.extend(r.split_whitespace());
                self.nat(&args)?;
            }
            if add_jump {
                self.nat(&["-A", "POSTROUTING", "-j", chain])?;
            }
            return Ok(());
        };
        let mut child = command(restore)
            .args(["-w", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", restore.display()))?;
        child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("{} stdin", restore.display()))?
            .write_all(restore_input(chain, rules, add_jump).as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(anyhow!(
                "{} refused the rules: {}",
                restore.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }

    /// Deletes the jump to `chain` and the chain itself, if there.
    fn remove(&self, chain: &str) -> Result<()> {
        while self.has_jump(chain) {
            self.nat(&["-D", "POSTROUTING", "-j", chain])?;
        }
        if self.has_chain(chain) {
            self.nat(&["-F", chain])?;
            self.nat(&["-X", chain])?;
        }
        Ok(())
    }

    /// Installs `rules` (or removes the chain when there are none); returns them as
    /// commands for status output.
    fn apply(&self, chain: &str, rules: &[String]) -> Result<Vec<String>> {
        if rules.is_empty() {
            self.remove(chain)?;
            return Ok(Vec::new());
        }
        self.install(chain, rules)?;
        let name = self.name();
        Ok(rules
            .iter()
            .map(|r| format!("{name} -t nat -A {chain} {r}"))
            .collect())
    }
}

/// The iptables programs found on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iptables {
    /// IPv4.
    pub v4: Family,
    /// IPv6, if `ip6tables` is installed (otherwise IPv6 traffic is not NATed).
    pub v6: Option<Family>,
}

impl Iptables {
    /// Installs (replacing) the NAT rules for `prefs`; returns the rules in force.
    pub fn apply(&self, ifname: &str, prefs: &RoutingPrefs) -> Result<Vec<String>> {
        let chain = chain_name(ifname);
        let rules = rules(ifname, prefs);
        let mut out = self.v4.apply(&chain, &rules.v4)?;
        if let Some(v6) = &self.v6 {
            out.extend(v6.apply(&chain, &rules.v6)?);
        }
        Ok(out)
    }

    /// Deletes our chains and the jumps to them.
    pub fn remove(&self, ifname: &str) -> Result<()> {
        let chain = chain_name(ifname);
        let v4 = self.v4.remove(&chain);
        if let Some(v6) = &self.v6 {
            v6.remove(&chain)?;
        }
        v4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefs::ViaSite;

    #[test]
    fn snat_on_masquerades_the_tailnet() {
        let p = RoutingPrefs {
            advertise_routes: vec!["192.168.1.0/24".parse().unwrap()],
            ..RoutingPrefs::default()
        };
        let r = rules("tg0", &p);
        assert_eq!(
            r.v4,
            vec![
                "! -o tg0 -s 100.64.0.0/10 -p tcp -j MASQUERADE --to-ports 1024-60999",
                "! -o tg0 -s 100.64.0.0/10 -p udp -j MASQUERADE --to-ports 1024-60999",
                "! -o tg0 -s 100.64.0.0/10 -j MASQUERADE",
            ]
        );
        assert_eq!(r.v6[2], "! -o tg0 -s fd7a:115c:a1e0::/48 -j MASQUERADE");
        assert_eq!(rules("tg0", &RoutingPrefs::default()), Rules::default());
    }

    #[test]
    fn snat_off_masquerades_via_and_exit_traffic_except_advertised_routes() {
        let p = RoutingPrefs {
            advertise_routes: vec![
                "192.168.1.0/24".parse().unwrap(),
                "fd00:1::/64".parse().unwrap(),
            ],
            via: vec![ViaSite {
                site: 7,
                routes: vec!["10.1.1.0/24".parse().unwrap()],
            }],
            snat_subnet_routes: false,
            advertise_exit_node: true,
            ..RoutingPrefs::default()
        };
        let r = rules("tg0", &p);
        assert_eq!(
            r.v4,
            vec![
                "! -o tg0 -s 100.64.0.0/10 -d 10.1.1.0/24 -p tcp -j MASQUERADE --to-ports 1024-60999",
                "! -o tg0 -s 100.64.0.0/10 -d 10.1.1.0/24 -p udp -j MASQUERADE --to-ports 1024-60999",
                "! -o tg0 -s 100.64.0.0/10 -d 10.1.1.0/24 -j MASQUERADE",
                "! -o tg0 -s 100.64.0.0/10 -d 192.168.1.0/24 -j RETURN",
                "! -o tg0 -s 100.64.0.0/10 -p tcp -j MASQUERADE --to-ports 1024-60999",
                "! -o tg0 -s 100.64.0.0/10 -p udp -j MASQUERADE --to-ports 1024-60999",
                "! -o tg0 -s 100.64.0.0/10 -j MASQUERADE",
            ]
        );
        assert_eq!(r.v6.len(), 4);
        assert_eq!(
            r.v6[0],
            "! -o tg0 -s fd7a:115c:a1e0::/48 -d fd00:1::/64 -j RETURN"
        );
        // 4via6 alone: only the via LANs.
        let via_only = RoutingPrefs {
            advertise_exit_node: false,
            ..p
        };
        let r = rules("tg0", &via_only);
        assert_eq!(r.v4.len(), 3);
        assert!(r.v6.is_empty());
    }

    #[test]
    fn snat_off_without_via_or_exit_needs_no_rules() {
        let p = RoutingPrefs {
            advertise_routes: vec!["192.168.1.0/24".parse().unwrap()],
            snat_subnet_routes: false,
            ..RoutingPrefs::default()
        };
        assert_eq!(rules("tg0", &p), Rules::default());
    }

    #[test]
    fn restore_input_replaces_the_chain_and_adds_the_jump_once() {
        let r = vec!["! -o tg0 -s 100.64.0.0/10 -j MASQUERADE".to_string()];
        assert_eq!(
            restore_input("TAILGATE-tg0", &r, true),
            "*nat\n:TAILGATE-tg0 - [0:0]\n-A TAILGATE-tg0 ! -o tg0 -s 100.64.0.0/10 -j MASQUERADE\n\
             -A POSTROUTING -j TAILGATE-tg0\nCOMMIT\n"
        );
        assert!(!restore_input("TAILGATE-tg0", &r, false).contains("POSTROUTING"));
        assert_eq!(chain_name("tailgate0"), "TAILGATE-tailgate0");
        assert_eq!(chain_name("tg.x-1"), "TAILGATE-tg_x_1");
    }
}
