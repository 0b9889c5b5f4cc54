//! Routing preferences of a node — what it advertises as a router and what it accepts as a
//! client — settable in the config file and at runtime with `tailgate set`, with Tailscale's
//! names and defaults.

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::nat::via6::{self, SiteId};

/// A 4via6 site: an IPv4 LAN that may overlap with other sites, reached through a site ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViaSite {
    /// Site ID, 0–65535.
    pub site: u16,
    /// The site's IPv4 LAN prefixes.
    pub routes: Vec<Ipv4Net>,
}

/// The routing preferences of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingPrefs {
    /// Subnet routes this node advertises (it forwards for them).
    pub advertise_routes: Vec<IpNet>,
    /// 4via6 sites this node advertises.
    pub via: Vec<ViaSite>,
    /// Masquerade tailnet sources to the LAN address (default on, as in Tailscale).
    pub snat_subnet_routes: bool,
    /// Offer exit-node service (advertises 0.0.0.0/0 and ::/0).
    pub advertise_exit_node: bool,
    /// Install the subnet routes peers advertise (default off on Linux, as in Tailscale).
    pub accept_routes: bool,
    /// The exit node to send internet traffic through: a peer's tailnet IP or name.
    pub exit_node: Option<String>,
    /// With an exit node, keep the local LAN reachable directly.
    pub exit_node_allow_lan_access: bool,
    /// Run a peer relay for other nodes of the tailnet on this UDP port (control mode).
    #[serde(default)]
    pub peer_relay_port: Option<u16>,
}

impl Default for RoutingPrefs {
    fn default() -> Self {
        RoutingPrefs {
            advertise_routes: Vec::new(),
            via: Vec::new(),
            snat_subnet_routes: true,
            advertise_exit_node: false,
            accept_routes: false,
            exit_node: None,
            exit_node_allow_lan_access: false,
            peer_relay_port: None,
        }
    }
}

/// The default routes an exit node advertises.
pub fn exit_routes() -> [IpNet; 2] {
    [
        IpNet::V4(Ipv4Net::default()),
        IpNet::V6(ipnet::Ipv6Net::default()),
    ]
}

impl RoutingPrefs {
    /// Everything this node advertises: subnet routes, 4via6 prefixes and, as an exit node,
    /// the default routes.
    pub fn advertised(&self) -> Vec<IpNet> {
        let mut all = self.advertise_routes.clone();
        for v in &self.via {
            let site = SiteId::from_u32(u32::from(v.site)).expect("u16 site ids are valid");
            all.extend(
                v.routes
                    .iter()
                    .filter_map(|r| via6::map_via(site, *r).ok().map(IpNet::V6)),
            );
        }
        if self.advertise_exit_node {
            all.extend(exit_routes());
        }
        all
    }

    /// Whether the node forwards for others (and needs IP forwarding and NAT).
    pub fn is_router(&self) -> bool {
        !self.advertise_routes.is_empty() || !self.via.is_empty() || self.advertise_exit_node
    }

    /// Checks every value; errors name the setting.
    pub fn validate(&self) -> Result<(), String> {
        let max = u16::MAX - crate::peer_relay::DEFAULT_SESSIONS;
        if let Some(p) = self.peer_relay_port.filter(|p| *p == 0 || *p > max) {
            return Err(format!(
                "peer_relay_port {p}: want 1 to {max} (its sessions take the {} ports above it)",
                crate::peer_relay::DEFAULT_SESSIONS
            ));
        }
        for r in &self.advertise_routes {
            if r.prefix_len() == 0 {
                return Err(format!(
                    "advertise_routes: {r} is a default route; use advertise_exit_node instead"
                ));
            }
            if let IpNet::V6(v6) = r {
                if via6::is_via(&v6.network()) {
                    via6::parse_via(*v6).map_err(|e| format!("advertise_routes: {r}: {e}"))?;
                }
            }
        }
        for v in &self.via {
            for r in &v.routes {
                via6::check_target_net(*r).map_err(|e| format!("via site {}: {r}: {e}", v.site))?;
            }
        }
        Ok(())
    }

    /// Moves 4via6 prefixes given in `advertise_routes` (as Tailscale accepts them) into
    /// `via`, so both spellings behave the same.
    pub fn normalize(&mut self) -> Result<(), String> {
        let mut kept = Vec::new();
        for r in std::mem::take(&mut self.advertise_routes) {
            match r {
                IpNet::V6(v6) if via6::is_via(&v6.network()) => {
                    let (site, v4) =
                        via6::parse_via(v6).map_err(|e| format!("advertise_routes: {r}: {e}"))?;
                    match self.via.iter_mut().find(|s| s.site == site.get()) {
                        Some(s) if !s.routes.contains(&v4) => s.routes.push(v4),
                        Some(_) => {}
                        None => self.via.push(ViaSite {
                            site: site.get(),
                            routes: vec![v4],
                        }),
                    }
                }
                other => kept.push(other.trunc()),
            }
        }
        self.advertise_routes = kept;
        self.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_prefixes_in_advertise_routes_become_sites() {
        let mut p = RoutingPrefs {
            advertise_routes: vec![
                "192.168.1.0/24".parse().unwrap(),
                "fd7a:115c:a1e0:b1a:0:7:a01:100/120".parse().unwrap(),
            ],
            ..RoutingPrefs::default()
        };
        p.normalize().unwrap();
        assert_eq!(
            p.advertise_routes,
            vec!["192.168.1.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            p.via,
            vec![ViaSite {
                site: 7,
                routes: vec!["10.1.1.0/24".parse().unwrap()]
            }]
        );
        let adv = p.advertised();
        assert!(adv.contains(&"fd7a:115c:a1e0:b1a:0:7:a01:100/120".parse().unwrap()));
        assert!(p.is_router());
    }

    #[test]
    fn refuses_bad_targets_and_default_routes() {
        let p = RoutingPrefs {
            via: vec![ViaSite {
                site: 1,
                routes: vec!["127.0.0.0/8".parse().unwrap()],
            }],
            ..RoutingPrefs::default()
        };
        assert!(p.validate().unwrap_err().contains("via site 1"));
        let p = RoutingPrefs {
            advertise_routes: vec!["0.0.0.0/0".parse().unwrap()],
            ..RoutingPrefs::default()
        };
        assert!(p.validate().unwrap_err().contains("advertise_exit_node"));
        let mut p = RoutingPrefs {
            advertise_routes: vec!["fd7a:115c:a1e0:b1a:1:0:a01:100/120".parse().unwrap()],
            ..RoutingPrefs::default()
        };
        assert!(
            p.normalize().unwrap_err().contains("65535"),
            "{:?}",
            p.normalize()
        );
        assert!(RoutingPrefs::default().advertised().is_empty());
    }

    #[test]
    fn exit_node_advertises_default_routes() {
        let p = RoutingPrefs {
            advertise_exit_node: true,
            ..RoutingPrefs::default()
        };
        assert_eq!(p.advertised(), exit_routes().to_vec());
    }
}
