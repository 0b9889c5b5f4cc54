//! Policy routing for exit-node use: default routes through the TUN in a table of their own,
//! consulted for every packet except the tunnel's own (marked) UDP traffic — the scheme
//! Tailscale uses on Linux (table 52, fwmark 0x80000).

use anyhow::{anyhow, Result};
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::route::{RouteMessage, RouteType};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::IpVersion;

use super::{Netlink, MAIN_TABLE};

/// Routing table holding the exit-node default routes.
pub const EXIT_TABLE: u32 = 52;
/// Mark on the WireGuard socket's packets, so they bypass the exit table.
pub const BYPASS_MARK: u32 = 0x80000;
/// Mask of the bits of [`BYPASS_MARK`].
pub const BYPASS_MASK: u32 = 0xff0000;
/// Priority of the rule that sends marked packets to the main table.
const RULE_BYPASS_PRIORITY: u32 = 5210;
/// Priority of the rule that sends everything else to [`EXIT_TABLE`].
const RULE_EXIT_PRIORITY: u32 = 5270;

/// The rules and routes installed for an exit node; removed by [`ExitRouting::clear`].
pub struct ExitRouting {
    netlink: Netlink,
    index: u32,
    rules: Vec<RuleMessage>,
    routes: Vec<RouteMessage>,
}

impl ExitRouting {
    /// Nothing installed yet, for TUN interface `index`.
    pub fn new(netlink: Netlink, index: u32) -> Self {
        ExitRouting {
            netlink,
            index,
            rules: Vec::new(),
            routes: Vec::new(),
        }
    }

    /// The TUN interface index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Whether exit routing is in place.
    pub fn is_active(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Sends all traffic through the TUN except the tunnel's own and `lan_exclusions`
    /// (networks that stay on their usual routes, for `--exit-node-allow-lan-access`).
    pub async fn enable(&mut self, lan_exclusions: &[IpNet]) -> Result<()> {
        self.clear().await?;
        let defaults: [IpNet; 2] = crate::prefs::exit_routes();
        for net in defaults {
            let route = self
                .netlink
                .add_route_in(net, Some(self.index), EXIT_TABLE, RouteType::Unicast)
                .await?;
            self.routes.extend(route);
            for (priority, table, mark) in [
                (RULE_BYPASS_PRIORITY, MAIN_TABLE, Some(BYPASS_MARK)),
                (RULE_EXIT_PRIORITY, EXIT_TABLE, None),
            ] {
                let rule = self
                    .add_rule(matches!(net, IpNet::V6(_)), priority, table, mark)
                    .await?;
                self.rules.push(rule);
            }
        }
        for net in lan_exclusions {
            let route = self
                .netlink
                .add_route_in(*net, None, EXIT_TABLE, RouteType::Throw)
                .await?;
            self.routes.extend(route);
        }
        Ok(())
    }

    async fn add_rule(
        &self,
        v6: bool,
        priority: u32,
        table: u32,
        mark: Option<u32>,
    ) -> Result<RuleMessage> {
        let mut req = self
            .netlink
            .handle
            .rule()
            .add()
            .priority(priority)
            .table_id(table)
            .action(RuleAction::ToTable);
        if let Some(mark) = mark {
            req = req.fw_mark(mark);
            req.message_mut()
                .attributes
                .push(RuleAttribute::FwMask(BYPASS_MASK));
        }
        let (msg, result) = if v6 {
            let mut r = req.v6();
            (r.message_mut().clone(), r.execute().await)
        } else {
            let mut r = req.v4();
            (r.message_mut().clone(), r.execute().await)
        };
        result.map_err(|e| anyhow!("adding policy rule (priority {priority}): {e}"))?;
        Ok(msg)
    }

    /// Removes every rule and route this added.
    pub async fn clear(&mut self) -> Result<()> {
        let h = &self.netlink.handle;
        for rule in self.rules.drain(..) {
            if let Err(e) = h.rule().del(rule).execute().await {
                log::warn!("removing policy rule: {e}");
            }
        }
        for route in self.routes.drain(..) {
            if let Err(e) = self.netlink.delete_route(route).await {
                log::warn!("removing exit route: {e:#}");
            }
        }
        Ok(())
    }
}

/// The networks directly connected to interfaces other than `except` (loopback and the
/// tailnet ranges excluded): the LAN that `--exit-node-allow-lan-access` keeps direct.
pub async fn connected_networks(netlink: &Netlink, except: u32) -> Result<Vec<IpNet>> {
    let mut nets = Vec::new();
    for version in [IpVersion::V4, IpVersion::V6] {
        let mut routes = netlink.handle.route().get(version).execute();
        while let Some(r) = routes
            .try_next()
            .await
            .map_err(|e| anyhow!("listing routes: {e}"))?
        {
            use netlink_packet_route::route::{RouteAttribute, RouteScope};
            if r.header.scope != RouteScope::Link || r.header.table != 254 {
                continue;
            }
            let oif = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            if oif == Some(except) {
                continue;
            }
            let dst = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(d) => Some(d.clone()),
                _ => None,
            });
            if let Some(net) = dst.and_then(|d| route_net(&d, r.header.destination_prefix_length)) {
                let tailnet = ["100.64.0.0/10", "fd7a:115c:a1e0::/48", "fe80::/10"]
                    .iter()
                    .any(|t| t.parse::<IpNet>().is_ok_and(|t| t.contains(&net.addr())));
                if !tailnet && !net.addr().is_loopback() {
                    nets.push(net);
                }
            }
        }
    }
    nets.sort();
    nets.dedup();
    Ok(nets)
}

fn route_net(d: &netlink_packet_route::route::RouteAddress, len: u8) -> Option<IpNet> {
    use netlink_packet_route::route::RouteAddress;
    let ip: std::net::IpAddr = match d {
        RouteAddress::Inet(a) => (*a).into(),
        RouteAddress::Inet6(a) => (*a).into(),
        _ => return None,
    };
    IpNet::new(ip, len).ok().map(|n| n.trunc())
}
