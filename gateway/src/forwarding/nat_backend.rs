//! Which program installs the masquerade rules: `nft` when it is on `PATH` (preferred),
//! otherwise `iptables` (Synology DSM has no nftables), chosen once per daemon and only when
//! some rule is needed — a subnet router without SNAT, 4via6 or exit service needs neither.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

use super::iptables::{Family, Iptables};
use super::nft;
use crate::prefs::RoutingPrefs;

/// A NAT backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatBackend {
    /// `nft`: a table of our own, replaced atomically.
    Nft,
    /// `iptables` (and `ip6tables` if present): a chain of our own in the `nat` table.
    Iptables(Iptables),
}

/// Whether `prefs` need any NAT rule (the rulesets of both backends are empty otherwise).
pub fn needs_nat(prefs: &RoutingPrefs) -> bool {
    prefs.is_router()
        && (prefs.snat_subnet_routes
            || prefs.advertise_exit_node
            || prefs.via.iter().any(|v| !v.routes.is_empty()))
}

/// The executable `name` in the directories of `path` (a `PATH` value), if any.
pub fn find_in(path: &str, name: &str) -> Option<PathBuf> {
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The executable `name` on this process's `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    find_in(&std::env::var("PATH").unwrap_or_default(), name)
}

impl NatBackend {
    /// Chooses the backend from the programs `find` locates: `nft`, else `iptables`, else an
    /// error naming both packages.
    pub fn choose(find: impl Fn(&str) -> Option<PathBuf>) -> Result<NatBackend> {
        if find("nft").is_some() {
            return Ok(NatBackend::Nft);
        }
        let Some(tool) = find("iptables") else {
            return Err(anyhow!(
                "NAT needs nft or iptables, and neither is on PATH: install the nftables \
                 (preferred) or the iptables package"
            ));
        };
        let v4 = Family {
            tool,
            restore: find("iptables-restore"),
        };
        let v6 = find("ip6tables").map(|tool| Family {
            tool,
            restore: find("ip6tables-restore"),
        });
        Ok(NatBackend::Iptables(Iptables { v4, v6 }))
    }

    /// Chooses the backend from the programs on `PATH`, logging the choice.
    pub fn detect() -> Result<NatBackend> {
        let b = NatBackend::choose(find_program)?;
        match &b {
            NatBackend::Nft => log::info!("NAT backend: nftables"),
            NatBackend::Iptables(ipt) => {
                log::info!("NAT backend: iptables (nft not found on PATH)");
                if ipt.v6.is_none() {
                    log::warn!("ip6tables not found: IPv6 NAT is unavailable");
                }
            }
        }
        Ok(b)
    }

    /// The backend's name for status output: `nftables` or `iptables`.
    pub fn name(&self) -> &'static str {
        match self {
            NatBackend::Nft => "nftables",
            NatBackend::Iptables(_) => "iptables",
        }
    }

    /// Installs (replacing) the NAT rules for `prefs` on TUN `ifname`; returns the rules in
    /// force.
    pub fn apply(&self, ifname: &str, prefs: &RoutingPrefs) -> Result<Vec<String>> {
        match self {
            NatBackend::Nft => nft::apply(ifname, prefs),
            NatBackend::Iptables(ipt) => ipt.apply(ifname, prefs),
        }
    }

    /// Removes our rules for TUN `ifname`.
    pub fn remove(&self, ifname: &str) -> Result<()> {
        match self {
            NatBackend::Nft => nft::remove(ifname),
            NatBackend::Iptables(ipt) => ipt.remove(ifname),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwarding::iptables;
    use crate::prefs::ViaSite;

    fn finder(present: &'static [&'static str]) -> impl Fn(&str) -> Option<PathBuf> {
        move |n| {
            present
                .contains(&n)
                .then(|| PathBuf::from(format!("/sbin/{n}")))
        }
    }

    #[test]
    fn nft_is_preferred_then_iptables_then_a_clear_error() {
        let all = &["nft", "iptables", "iptables-restore", "ip6tables"];
        assert_eq!(NatBackend::choose(finder(all)).unwrap(), NatBackend::Nft);
        let b = NatBackend::choose(finder(&["iptables", "iptables-restore", "ip6tables"])).unwrap();
        let NatBackend::Iptables(ipt) = b else {
            panic!("{b:?}")
        };
        assert_eq!(ipt.v4.tool, PathBuf::from("/sbin/iptables"));
        assert_eq!(
            ipt.v4.restore,
            Some(PathBuf::from("/sbin/iptables-restore"))
        );
        let v6 = ipt.v6.expect("ip6tables");
        assert_eq!(v6.restore, None);
        let NatBackend::Iptables(v4_only) = NatBackend::choose(finder(&["iptables"])).unwrap()
        else {
            panic!()
        };
        assert_eq!(v4_only.v6, None);
        let e = NatBackend::choose(finder(&["ip6tables"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nftables") && e.contains("iptables package"),
            "{e}"
        );
    }

    #[test]
    fn programs_are_found_only_if_executable() {
        let dir = std::env::temp_dir().join(format!("tg-path-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (exe, data) = (dir.join("iptables"), dir.join("nft"));
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::write(&data, "").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("/nonexistent::{}", dir.display());
        assert_eq!(find_in(&path, "iptables"), Some(exe));
        assert_eq!(find_in(&path, "nft"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn needs_nat_agrees_with_both_rulesets() {
        let route = vec!["192.168.1.0/24".parse().unwrap()];
        let via = vec![ViaSite {
            site: 7,
            routes: vec!["10.1.1.0/24".parse().unwrap()],
        }];
        for snat in [false, true] {
            for exit in [false, true] {
                for with_via in [false, true] {
                    for router in [false, true] {
                        let p = RoutingPrefs {
                            advertise_routes: if router { route.clone() } else { Vec::new() },
                            via: if with_via { via.clone() } else { Vec::new() },
                            snat_subnet_routes: snat,
                            advertise_exit_node: exit,
                            ..RoutingPrefs::default()
                        };
                        let need = needs_nat(&p);
                        assert_eq!(need, !nft::ruleset("tg0", &p).is_empty(), "{p:?}");
                        assert_eq!(
                            need,
                            iptables::rules("tg0", &p) != iptables::Rules::default(),
                            "{p:?}"
                        );
                    }
                }
            }
        }
    }
}
