//! Bringing the system in line with the routing preferences: routes through the TUN, IP
//! forwarding, the XDP fast path and NAT for a router, policy routing for an exit-node client
//! — at start-up, on every `tailgate set`, and undone on shutdown.

use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::device::Device;
use crate::netcfg::policy::{connected_networks, ExitRouting, BYPASS_MARK};
use crate::netcfg::{InstalledRoutes, Netlink};
use crate::prefs::RoutingPrefs;

use super::nat_backend::{needs_nat, NatBackend};
use super::{sysctl, FastPath};

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
    /// HA priority among routers for the same prefix (control mode; not a routing
    /// preference of this node, passed on to the coordination server).
    #[serde(default)]
    pub route_priority: Option<u32>,
    /// Run (or stop) a peer relay for the tailnet.
    #[serde(default)]
    pub advertise_peer_relay: Option<bool>,
    /// The peer relay's UDP port (given alone, it also turns the relay on).
    #[serde(default)]
    pub peer_relay_port: Option<u16>,
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
        // A port alone turns the relay on, like Tailscale's --relay-server-port.
        let relay_on = self
            .advertise_peer_relay
            .unwrap_or(p.peer_relay_port.is_some() || self.peer_relay_port.is_some());
        p.peer_relay_port = relay_on.then(|| {
            self.peer_relay_port
                .or(p.peer_relay_port)
                .unwrap_or(crate::peer_relay::DEFAULT_PORT)
        });
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
    /// The NAT rules in force (the fallback forwarding path), as the backend states them.
    pub nat_rules: Vec<String>,
    /// The program that installed them: `nftables` or `iptables`; `None` while no NAT rule
    /// was needed.
    #[serde(default)]
    pub nat_backend: Option<String>,
    /// Which path forwards subnet traffic and why.
    pub forwarding_path: String,
    /// The XDP fast path in detail.
    #[serde(default)]
    pub fast_path: super::FastPathStatus,
    /// Whether exit-node policy routing is active.
    pub exit_routing: bool,
}

/// The routing layer of the daemon.
pub struct Routing {
    ifname: String,
    netlink: Netlink,
    exit: ExitRouting,
    status: RoutingStatus,
    /// The NAT backend, chosen when a rule is first needed.
    nat: Option<NatBackend>,
    /// Whether rules of ours are installed (or, until the first router apply, may be left
    /// over from a daemon that was killed).
    nat_installed: bool,
    /// Whether the first apply as a router has looked for rules left over.
    leftovers_checked: bool,
    fast: FastPath,
    /// Userspace networking: no kernel forwarding, NAT or policy routing to drive.
    userspace: bool,
}

impl Routing {
    /// Marks the node as running userspace networking: preferences that need the kernel
    /// (subnet routes, exit node service or use) are refused with the reason.
    pub fn set_userspace(&mut self) {
        self.userspace = true;
    }

    /// Nothing applied yet for TUN `ifname` (index `index`); `fast` forwards what it can.
    pub fn new(ifname: &str, index: u32, netlink: Netlink, fast: FastPath) -> Routing {
        Routing {
            ifname: ifname.to_string(),
            exit: ExitRouting::new(netlink.clone(), index),
            netlink,
            status: RoutingStatus::default(),
            nat: None,
            nat_installed: false,
            leftovers_checked: false,
            fast,
            userspace: false,
        }
    }

    /// What is in force (the fast path as of the last change; see [`Routing::report`]).
    pub fn status(&self) -> &RoutingStatus {
        &self.status
    }

    /// What is in force, with the fast path's current counters.
    pub fn report(&self) -> RoutingStatus {
        RoutingStatus {
            fast_path: self.fast.status(),
            ..self.status.clone()
        }
    }

    /// Picks up LAN interfaces that appeared or changed, frees idle fast-path connections,
    /// and moves 4via6 sites between XDP and userspace accordingly; call every few seconds.
    pub async fn refresh(&mut self, dev: &Device) {
        let prefs = self.status.prefs.clone();
        if !prefs.is_router() {
            return;
        }
        let before = self.fast.served_via();
        self.fast.refresh(&prefs).await;
        let served = self.fast.served_via();
        if served != before {
            dev.set_via(&prefs.via, &served);
        }
        self.status.forwarding_path = self.describe_path(&prefs);
    }

    fn describe_path(&self, prefs: &RoutingPrefs) -> String {
        if !prefs.is_router() {
            return "not a router".into();
        }
        let kernel = match &self.nat {
            Some(b) => format!(
                "kernel forwarding + {} masquerade, 4via6 in userspace",
                b.name()
            ),
            None => "kernel forwarding (no NAT rule needed), 4via6 in userspace".to_string(),
        };
        if self.fast.is_active() {
            format!("{}; the rest: {kernel}", self.fast.summary())
        } else {
            format!("{kernel} (XDP fast path {})", self.fast.summary())
        }
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
        if self.userspace && (prefs.is_router() || prefs.exit_node.is_some()) {
            return Err(anyhow!(
                "userspace networking cannot forward subnet routes, serve as an exit node or use \
                 one: run with a TUN device (without --tun=userspace-networking)"
            ));
        }
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
        // A router killed before its teardown leaves its rules: the first apply as a router
        // replaces or removes them, whenever there is a NAT program to do it with.
        if prefs.is_router() && !self.leftovers_checked {
            self.leftovers_checked = true;
            if let Ok(nat) = NatBackend::detect() {
                self.nat = Some(nat);
                self.nat_installed = true;
            }
        }
        // No NAT program runs unless a rule is needed or ours are to be removed: a subnet
        // router without SNAT, 4via6 or exit service works without nft or iptables.
        let nat_rules = if needs_nat(&prefs) || self.nat_installed {
            if self.nat.is_none() {
                self.nat = Some(NatBackend::detect()?);
            }
            let nat = self.nat.as_ref().expect("chosen above");
            let rules = nat.apply(&self.ifname, &prefs)?;
            self.nat_installed = !rules.is_empty();
            if !rules.is_empty() {
                log::info!("NAT rules in force ({}): {}", nat.name(), rules.join("; "));
            }
            rules
        } else {
            Vec::new()
        };

        if prefs.is_router() || self.fast.is_active() {
            self.fast.apply(&prefs).await;
        }
        dev.set_via(&prefs.via, &self.fast.served_via());

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

        let forwarding_path = self.describe_path(&prefs);
        self.status = RoutingStatus {
            fast_path: self.fast.status(),
            advertised: prefs.advertised().iter().map(ToString::to_string).collect(),
            prefs,
            forwarding_enabled,
            nat_rules,
            nat_backend: self.nat.as_ref().map(|b| b.name().to_string()),
            forwarding_path,
            exit_routing: exit_active,
        };
        Ok(())
    }

    fn exit_index(&self) -> u32 {
        self.exit.index()
    }

    /// Removes the NAT table, the XDP programs and the exit routing (routes go with the TUN
    /// device).
    pub async fn teardown(&mut self) {
        self.fast.shutdown();
        if let Err(e) = self.exit.clear().await {
            log::warn!("removing exit routing: {e:#}");
        }
        if let (true, Some(nat)) = (self.nat_installed, &self.nat) {
            if let Err(e) = nat.remove(&self.ifname) {
                log::warn!("removing NAT rules ({}): {e:#}", nat.name());
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
