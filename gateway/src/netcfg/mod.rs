//! Links, addresses and routes via rtnetlink. Everything added here is removed on shutdown
//! (routes explicitly; addresses with the TUN device, which the kernel deletes when it closes).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};

use anyhow::{anyhow, Context, Result};
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{RouteMessage, RouteType};
use rtnetlink::Handle;

pub mod policy;

/// The kernel's main routing table.
pub const MAIN_TABLE: u32 = 254;

/// A connection to the kernel's routing netlink socket.
#[derive(Clone)]
pub struct Netlink {
    pub(crate) handle: Handle,
}

impl Netlink {
    /// Opens a netlink connection; its reader runs as a tokio task.
    pub fn connect() -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink socket")?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The index of interface `name`.
    pub async fn link_index(&self, name: &str) -> Result<u32> {
        Ok(self.link_by_name(name).await?.header.index)
    }

    /// The link message of interface `name`.
    async fn link_by_name(&self, name: &str) -> Result<LinkMessage> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        links
            .try_next()
            .await
            .map_err(|e| anyhow!("looking up interface {name}: {e}"))?
            .ok_or_else(|| anyhow!("no interface named {name}"))
    }

    /// The name of the interface with `index`.
    pub async fn link_name(&self, index: u32) -> Result<String> {
        let mut links = self.handle.link().get().match_index(index).execute();
        let link = links
            .try_next()
            .await
            .with_context(|| format!("looking up interface {index}"))?
            .ok_or_else(|| anyhow!("no interface with index {index}"))?;
        if_name(&link).ok_or_else(|| anyhow!("interface {index} has no name"))
    }

    /// Whether interface `name` is a veth (container and lab links).
    pub async fn is_veth(&self, name: &str) -> Result<bool> {
        use netlink_packet_route::link::{InfoKind, LinkInfo};
        let link = self.link_by_name(name).await?;
        Ok(link.attributes.iter().any(|a| {
            matches!(a, LinkAttribute::LinkInfo(infos) if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))))
        }))
    }

    /// Sets the MTU, adds the addresses and brings the interface up.
    pub async fn configure_interface(
        &self,
        index: u32,
        mtu: u16,
        addresses: &[IpNet],
    ) -> Result<()> {
        self.handle
            .link()
            .set(index)
            .mtu(u32::from(mtu))
            .execute()
            .await
            .with_context(|| format!("setting MTU {mtu}"))?;
        for a in addresses {
            let r = self
                .handle
                .address()
                .add(index, a.addr(), a.prefix_len())
                .execute()
                .await;
            if let Err(e) = r {
                if !is_exists(&e) {
                    return Err(anyhow!("adding address {a}: {e}"));
                }
            }
        }
        self.handle
            .link()
            .set(index)
            .up()
            .execute()
            .await
            .context("bringing interface up")?;
        Ok(())
    }

    /// Adds `addresses` to interface `index` as receive-only service addresses (MagicDNS):
    /// IPv4 with host scope, IPv6 deprecated (preferred lifetime 0), so neither is picked as
    /// the source of packets leaving through the interface, whatever order addresses were
    /// added in.
    pub async fn add_service_addresses(&self, index: u32, addresses: &[IpNet]) -> Result<()> {
        use netlink_packet_route::address::{AddressScope, CacheInfo};
        for a in addresses {
            let mut req = self.handle.address().add(index, a.addr(), a.prefix_len());
            match a {
                IpNet::V4(_) => req.message_mut().header.scope = AddressScope::Host,
                IpNet::V6(_) => {
                    let mut lifetimes = CacheInfo::default();
                    lifetimes.ifa_preferred = 0;
                    lifetimes.ifa_valid = u32::MAX;
                    req.message_mut()
                        .attributes
                        .push(AddressAttribute::CacheInfo(lifetimes));
                }
            }
            if let Err(e) = req.execute().await {
                if !is_exists(&e) {
                    return Err(anyhow!("adding address {a}: {e}"));
                }
            }
        }
        Ok(())
    }

    /// Removes those of `addresses` that interface `index` holds.
    pub async fn remove_addresses(&self, index: u32, addresses: &[IpNet]) -> Result<()> {
        let mut list = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut doomed = Vec::new();
        while let Some(msg) = list.try_next().await.context("listing addresses")? {
            let held = msg.attributes.iter().any(|a| {
                matches!(a, AddressAttribute::Address(ip) if addresses.iter().any(|n| n.addr() == *ip))
            });
            if held {
                doomed.push(msg);
            }
        }
        for msg in doomed {
            self.handle
                .address()
                .del(msg)
                .execute()
                .await
                .context("removing an address")?;
        }
        Ok(())
    }

    /// Adds a route for `net` through interface `index`; `Ok(None)` if it already existed.
    async fn add_route(&self, index: u32, net: IpNet) -> Result<Option<RouteMessage>> {
        self.add_route_in(net, Some(index), MAIN_TABLE, RouteType::Unicast)
            .await
    }

    /// Adds a route of `kind` for `net` in `table`, through interface `oif` if given;
    /// `Ok(None)` if it already existed.
    pub async fn add_route_in(
        &self,
        net: IpNet,
        oif: Option<u32>,
        table: u32,
        kind: RouteType,
    ) -> Result<Option<RouteMessage>> {
        let mut req = self.handle.route().add().table_id(table).kind(kind);
        if let Some(i) = oif {
            req = req.output_interface(i);
        }
        let (result, msg) = match net {
            IpNet::V4(n) => {
                let mut req = req.v4().destination_prefix(n.network(), n.prefix_len());
                let msg = req.message_mut().clone();
                (req.execute().await, msg)
            }
            IpNet::V6(n) => {
                let mut req = req.v6().destination_prefix(n.network(), n.prefix_len());
                let msg = req.message_mut().clone();
                (req.execute().await, msg)
            }
        };
        match result {
            Ok(()) => Ok(Some(msg)),
            Err(e) if is_exists(&e) => Ok(None),
            Err(e) => Err(anyhow!("adding route {net} (table {table}): {e}")),
        }
    }

    /// Deletes a route added by [`Netlink::add_route_in`]; a missing route is fine.
    pub async fn delete_route(&self, msg: RouteMessage) -> Result<()> {
        self.del_route(msg).await
    }

    async fn del_route(&self, msg: RouteMessage) -> Result<()> {
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(anyhow!("deleting route: {e}")),
        }
    }

    /// The name of the interface whose address the kernel would use to reach `dst`.
    pub async fn interface_toward(&self, dst: SocketAddr) -> Result<String> {
        Ok(self.source_toward(dst.ip()).await?.0)
    }

    /// The source address the kernel picks for packets to `dst`, and the interface that
    /// holds it (the egress interface for directly attached and gateway routes alike).
    pub async fn source_toward(&self, dst: IpAddr) -> Result<(String, IpAddr)> {
        let probe = match dst {
            IpAddr::V4(_) => UdpSocket::bind(("0.0.0.0", 0)),
            IpAddr::V6(_) => UdpSocket::bind(("::", 0)),
        }
        .context("probe socket")?;
        probe
            .connect((dst, 9))
            .with_context(|| format!("no route to {dst}"))?;
        let local = probe.local_addr()?.ip();
        Ok((self.interface_with_address(local).await?, local))
    }

    /// The name of the interface that holds `addr`.
    pub async fn interface_with_address(&self, addr: IpAddr) -> Result<String> {
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_address_filter(addr)
            .execute();
        while let Some(msg) = addrs.try_next().await.context("listing addresses")? {
            let holds = msg.attributes.iter().any(|a| {
                matches!(a, AddressAttribute::Address(ip) | AddressAttribute::Local(ip) if *ip == addr)
            });
            if holds {
                return self.link_name(msg.header.index).await;
            }
        }
        Err(anyhow!("no interface holds address {addr}"))
    }

    /// Names of all interfaces that are up, except loopback.
    pub async fn up_interfaces(&self) -> Result<Vec<String>> {
        let mut links = self.handle.link().get().execute();
        let mut names = Vec::new();
        while let Some(link) = links.try_next().await.context("listing interfaces")? {
            use netlink_packet_route::link::LinkFlag;
            let flags = &link.header.flags;
            if flags.contains(&LinkFlag::Up) && !flags.contains(&LinkFlag::Loopback) {
                names.extend(if_name(&link));
            }
        }
        Ok(names)
    }
}

/// The name attribute of a link message.
fn if_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn is_exists(e: &rtnetlink::Error) -> bool {
    errno_of(e) == Some(libc::EEXIST)
}

fn is_not_found(e: &rtnetlink::Error) -> bool {
    matches!(errno_of(e), Some(libc::ESRCH) | Some(libc::ENOENT))
}

/// The routes this daemon installed through its TUN device, kept in step with the peers'
/// allowed IPs.
pub struct InstalledRoutes {
    netlink: Netlink,
    index: u32,
    routes: HashMap<IpNet, Option<RouteMessage>>,
    /// Userspace networking: there is no TUN to route to, so nothing is installed.
    userspace: bool,
}

impl InstalledRoutes {
    /// No routes yet, for interface `index`.
    pub fn new(netlink: Netlink, index: u32) -> Self {
        InstalledRoutes {
            netlink,
            index,
            routes: HashMap::new(),
            userspace: false,
        }
    }

    /// A table for userspace networking: routing is the device's alone, no kernel routes.
    pub fn userspace(netlink: Netlink) -> Self {
        InstalledRoutes {
            userspace: true,
            ..InstalledRoutes::new(netlink, 0)
        }
    }

    /// Adds routes for new networks in `wanted` and removes those no longer wanted.
    pub async fn sync(&mut self, wanted: &[IpNet]) -> Result<()> {
        if self.userspace {
            return Ok(());
        }
        let stale: Vec<IpNet> = self
            .routes
            .keys()
            .filter(|n| !wanted.contains(n))
            .copied()
            .collect();
        for net in stale {
            if let Some(Some(msg)) = self.routes.remove(&net) {
                self.netlink.del_route(msg).await?;
            }
        }
        for net in wanted {
            if !self.routes.contains_key(net) {
                let msg = self.netlink.add_route(self.index, *net).await?;
                self.routes.insert(*net, msg);
            }
        }
        Ok(())
    }

    /// Removes every route this table added.
    pub async fn clear(&mut self) -> Result<()> {
        self.sync(&[]).await
    }
}
