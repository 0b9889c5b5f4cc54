//! Bringing the system in line with the routing preferences: routes through the TUN, IP
//! forwarding and NAT for a router, policy routing for an exit-node client — at start-up and
//! on every `tailgate set`, and undone on shutdown.

use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::device::Device;
use crate::netcfg::policy::{connected_networks, ExitRouting, BYPASS_MARK};
use crate::netcfg::{InstalledRoutes, Netlink};
use crate::prefs::RoutingPrefs;

use super::{nft, sysctl};

/// A change requested by `tailgate set`: only the given fields change.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoutingChange {
    /// New subnet routes to advertise (replacing the old list).
    pub advertise_routes: Option<Vec<ipnet::IpNet>>,
    /// SNAT for subnet routes.
    pub snat_subnet_routes: Option<bool>,
    /// Offer exit-node service.
    pub advertise_exit_node: Option<bool>,
    /// Install peers' subnet routes.
    pub accept_routes: Option<bool>,
    /// Exit node to use; `Some("")` clears it.
    pub exit_node: Option<String>,
    /// Keep the LAN direct while using an exit node.
    pub exit_node_allow_lan_access: Option<bool>,
}

impl RoutingChange {
    /// `prefs` with this change applied.
    pub fn applied_to(&self, prefs: &RoutingPrefs) -> RoutingPrefs {
        let mut p = prefs.clone();
        if let Some(r) = &self.advertise_routes {
            p.advertise_routes = r.clone();
            p.via.clear();
        }
        if let Some(v) = self.snat_subnet_routes {
            p.snat_subnet_routes = v;
        }
        if let Some(v) = self.advertise_exit_node {
            p.advertise_exit_node = v;
        }
        if let Some(v) = self.accept_routes {
            p.accept_routes = v;
        }
        if let Some(e) = &self.exit_node {
            p.exit_node = (!e.is_empty()).then(|| e.clone());
        }
        if let Some(v) = self.exit_node_allow_lan_access {
            p.exit_node_allow_lan_access = v;
        }
        p
    }
}

/// What the routing layer has put in place, for status output.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoutingStatus {
    /// The preferences in force.
    pub prefs: RoutingPrefs,
    /// Everything advertised (subnet routes, 4via6 prefixes, default routes).
    pub advertised: Vec<String>,
    /// Sysctls this daemon turned on.
    pub forwarding_enabled: Vec<String>,
    /// The nftables rules in force (the fallback forwarding path).
    pub nat_rules: Vec<String>,
    /// Which path forwards subnet traffic and why.
    pub forwarding_path: String,
    /// Whether exit-node policy routing is active.
    pub exit_routing: bool,
}

/// The routing layer of the daemon.
pub struct Routing {
    ifname: String,
    netlink: Netlink,
    exit: ExitRouting,
    status: RoutingStatus,
    nft_installed: bool,
}

impl Routing {
    /// Nothing applied yet for TUN `ifname` (index `index`).
    pub fn new(ifname: &str, index: u32, netlink: Netlink) -> Routing {
        Routing {
            ifname: ifname.to_string(),
            exit: ExitRouting::new(netlink.clone(), index),
            netlink,
            status: RoutingStatus::default(),
            nft_installed: false,
        }
    }

    /// What is in force.
    pub fn status(&self) -> &RoutingStatus {
        &self.status
    }

    /// Applies `prefs`: device routing (accepted routes, exit node, 4via6), TUN routes,
    /// forwarding and NAT for a router, policy routing for an exit-node client. A refused
    /// change (e.g. an unknown exit node) leaves everything as it was.
    pub async fn apply(
        &mut self,
        dev: &Device,
        routes: &Mutex<InstalledRoutes>,
        mut prefs: RoutingPrefs,
    ) -> Result<()> {
        prefs.normalize().map_err(|e| anyhow!(e))?;
        dev.set_routing(&prefs).map_err(|e| anyhow!(e))?;
        routes.lock().await.sync(&dev.allowed_networks()).await?;

        let mut forwarding_enabled = self.status.forwarding_enabled.clone();
        if prefs.is_router() {
            let changed =
                sysctl::enable_forwarding().map_err(|e| anyhow!("enabling IP forwarding: {e}"))?;
            for c in changed {
                log::info!("enabled IP forwarding: {c}");
                forwarding_enabled.push(c);
            }
        }
        let nat_rules = if prefs.is_router() || self.nft_installed {
            let rules = nft::apply(&self.ifname, &prefs)?;
            self.nft_installed = !rules.is_empty();
            if !rules.is_empty() {
                log::info!("NAT rules in force: {}", rules.join("; "));
            }
            rules
        } else {
            Vec::new()
        };

        let exit_active = dev.state().client.exit_peer.is_some();
        if exit_active {
            let exclusions = if prefs.exit_node_allow_lan_access {
                connected_networks(&self.netlink, self.exit_index()).await?
            } else {
                Vec::new()
            };
            dev.socket.set_fwmark(BYPASS_MARK)?;
            self.exit.enable(&exclusions).await?;
            log::info!(
                "using exit node {}; LAN kept direct: {:?}",
                prefs.exit_node.as_deref().unwrap_or("?"),
                exclusions
            );
        } else if self.exit.is_active() {
            self.exit.clear().await?;
            dev.socket.set_fwmark(0)?;
        }

        let forwarding_path = if prefs.is_router() {
            "kernel forwarding + nftables masquerade, 4via6 translated in userspace".to_string()
        } else {
            "not a router".to_string()
        };
        self.status = RoutingStatus {
            advertised: prefs.advertised().iter().map(ToString::to_string).collect(),
            prefs,
            forwarding_enabled,
            nat_rules,
            forwarding_path,
            exit_routing: exit_active,
        };
        Ok(())
    }

    fn exit_index(&self) -> u32 {
        self.exit.index()
    }

    /// Removes the NAT table and the exit routing (routes go with the TUN device).
    pub async fn teardown(&mut self) {
        if let Err(e) = self.exit.clear().await {
            log::warn!("removing exit routing: {e:#}");
        }
        if self.nft_installed {
            if let Err(e) = nft::remove(&self.ifname) {
                log::warn!("removing NAT rules: {e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_touch_only_given_fields() {
        let base = RoutingPrefs {
            advertise_routes: vec!["10.0.0.0/16".parse().unwrap()],
            accept_routes: true,
            ..RoutingPrefs::default()
        };
        let change = RoutingChange {
            exit_node: Some("router-a".into()),
            snat_subnet_routes: Some(false),
            ..RoutingChange::default()
        };
        let p = change.applied_to(&base);
        assert_eq!(p.exit_node.as_deref(), Some("router-a"));
        assert!(!p.snat_subnet_routes && p.accept_routes);
        assert_eq!(p.advertise_routes, base.advertise_routes);
        let clear = RoutingChange {
            exit_node: Some(String::new()),
            ..RoutingChange::default()
        };
        assert_eq!(clear.applied_to(&p).exit_node, None);
    }
}
