//! The XDP forwarding fast path as a router runs it: which advertised routes `tun_forward` and
//! `lan_return` serve, on which LAN interfaces, and why the rest stays on the kernel path.
//!
//! Every advertised IPv4 subnet and 4via6 site is resolved to the interface the kernel would
//! send its traffic out of (and the router's address there, the SNAT source). A route is served
//! by XDP when that interface can carry `lan_return`: not the TUN, not loopback, and not the
//! interface where `wan_ingress` runs (one XDP program per interface). Everything else —
//! exit-node traffic, IPv6 subnets, routes whose LAN is not up yet — takes the kernel path
//! (forwarding + nftables masquerade, 4via6 in userspace). The resolution is repeated by
//! [`FastPath::refresh`], so LAN interfaces that appear after start-up are picked up.
//!
//! Replies `lan_return` de-NATs go to AF_XDP sockets when the daemon reads them
//! ([`FastPath::with_lan_sockets`]): one socket per receive queue of the (first) served LAN
//! interface, registered in `LAN_XSKS` and handed to the daemon with a stop token. The sockets
//! are rebound whenever the programs or that interface change; the old generation's readers
//! stop when their token is dropped. Without sockets (binding refused, no reader) the kernel
//! takes the replies (`XDP_PASS` into the TUN).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use tokio::sync::{mpsc, watch};

use crate::afxdp::{XdpSocket, XdpSocketConfig};
use crate::nat::via6::{self, SiteId};
use crate::netcfg::Netlink;
use crate::prefs::RoutingPrefs;
use crate::xdp::{AttachPreference, ForwardOptions, ForwardRoute, LanInterface, XdpForward};

/// What the fast path serves, for `tailgate status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FastPathStatus {
    /// Whether the XDP programs are loaded and attached.
    pub active: bool,
    /// Why the fast path is off, or why some routes are not on it.
    pub reason: Option<String>,
    /// The TUN attachment, e.g. `tailgate0 (generic)`.
    pub tun: Option<String>,
    /// LAN attachments, e.g. `eth1 (native, SNAT 192.168.1.1)`.
    pub lan: Vec<String>,
    /// Advertised routes XDP forwards.
    pub routes: Vec<String>,
    /// Advertised routes left to the kernel path, with the reason.
    pub kernel_routes: Vec<String>,
    /// Tracked connections.
    pub connections: usize,
    /// Both programs' counters (`tun` and `lan`).
    pub counters: Option<serde_json::Value>,
    /// Where replies `lan_return` de-NATs go: `AF_XDP sockets on lan0 (queues 0)` or
    /// `kernel (XDP_PASS into the TUN): <why>`.
    #[serde(default)]
    pub return_path: Option<String>,
}

/// An AF_XDP socket the fast path registered for one receive queue of a LAN interface, for
/// the daemon to read (see [`crate::device::datapath::xsk_to_udp`]).
pub struct LanSocket {
    /// The bound, registered socket.
    pub socket: XdpSocket,
    /// Changes (or closes) when the socket is unregistered: its reader must stop and drop it.
    pub stop: watch::Receiver<bool>,
}

/// The sockets of one generation: one LAN interface, one socket per receive queue.
struct SocketGeneration {
    ifname: String,
    queues: Vec<u32>,
    /// Dropping it stops the generation's readers.
    _stop: watch::Sender<bool>,
}

/// An advertised route the fast path could serve, and the IPv4 network its traffic goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    advertised: IpNet,
    target: Ipv4Net,
}

/// Where the kernel sends a candidate's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resolved {
    ifname: String,
    source: Ipv4Addr,
}

/// The decided layout: LAN interfaces and served routes, plus what stays in the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Layout {
    lan: BTreeMap<String, Ipv4Addr>,
    served: Vec<IpNet>,
    /// The LAN interface of each served route.
    lan_of: BTreeMap<IpNet, String>,
    kernel: Vec<(IpNet, String)>,
}

/// The fast path of one daemon.
pub struct FastPath {
    tun: String,
    netlink: Netlink,
    /// Where `wan_ingress` runs (cannot also carry `lan_return`).
    wan: Option<String>,
    /// `interface.lan_interface`: the only interface XDP may forward to, if set.
    lan_only: Option<String>,
    /// Set when the fast path must not be used at all (`--no-xdp`, load failure).
    off: Option<String>,
    lan_attach: AttachPreference,
    xdp: Option<XdpForward>,
    layout: Layout,
    snat: bool,
    /// Where AF_XDP sockets for returned replies go (`None`: no reader, kernel return path).
    lan_sockets: Option<mpsc::UnboundedSender<LanSocket>>,
    sockets: Option<SocketGeneration>,
    /// The interface sockets could not be bound on, and why (not retried for it).
    sockets_refused: Option<(String, String)>,
}

impl FastPath {
    /// A fast path for TUN `tun`; `off` says why it must stay off (nothing is loaded then);
    /// `lan_only` restricts it to one LAN interface.
    pub fn new(
        tun: &str,
        netlink: Netlink,
        wan: Option<String>,
        lan_only: Option<String>,
        off: Option<String>,
        lan_attach: AttachPreference,
    ) -> FastPath {
        FastPath {
            tun: tun.to_string(),
            netlink,
            wan,
            lan_only,
            off,
            lan_attach,
            xdp: None,
            layout: Layout::default(),
            snat: true,
            lan_sockets: None,
            sockets: None,
            sockets_refused: None,
        }
    }

    /// Returns replies through AF_XDP sockets: whenever `lan_return` runs, one socket per
    /// receive queue of the served LAN interface is bound, registered and sent on `to` for the
    /// daemon to read.
    pub fn with_lan_sockets(mut self, to: mpsc::UnboundedSender<LanSocket>) -> FastPath {
        self.lan_sockets = Some(to);
        self
    }

    /// Brings the programs in line with `prefs`. Failures switch the fast path off for good
    /// (the kernel path serves everything) and are reported in the status, never returned:
    /// forwarding must go on either way.
    pub async fn apply(&mut self, prefs: &RoutingPrefs) {
        if self.off.is_some() {
            return;
        }
        self.snat = prefs.snat_subnet_routes;
        let candidates = candidates(prefs);
        let mut resolved = BTreeMap::new();
        for c in &candidates {
            let probe = probe_address(c.target);
            let r = match self.netlink.source_toward(IpAddr::V4(probe)).await {
                Ok((ifname, IpAddr::V4(source))) => Ok(Resolved { ifname, source }),
                Ok((ifname, _)) => Err(format!("{ifname} has no IPv4 source")),
                Err(e) => Err(format!("{e:#}")),
            };
            resolved.insert(*c, r);
        }
        let mut layout = plan(
            &candidates,
            &resolved,
            &self.tun,
            self.wan.as_deref(),
            self.lan_only.as_deref(),
        );
        // Native XDP on a veth makes the kernel copy every packet and stops GRO for what it
        // passes (TCP from the LAN ran at a third of the kernel path's rate in our
        // measurements): `auto` means generic mode there, as for wan_ingress.
        let mut modes = BTreeMap::new();
        for ifname in layout.lan.keys() {
            let veth = self.netlink.is_veth(ifname).await.unwrap_or(false);
            let mode = match self.lan_attach {
                AttachPreference::Auto if veth => AttachPreference::Generic,
                m => m,
            };
            modes.insert(ifname.clone(), mode);
        }
        let generic: Vec<&String> = modes
            .iter()
            .filter(|(_, m)| **m == AttachPreference::Generic)
            .map(|(n, _)| n)
            .collect();
        keep_via_off(&mut layout, &generic);
        if let Err(e) = self.install(&mut layout, &modes) {
            log::warn!("XDP forwarding disabled: {e}; the kernel path forwards everything");
            self.sockets = None;
            self.xdp = None;
            self.off = Some(e);
            self.layout = Layout::default();
            return;
        }
        if layout != self.layout {
            log::info!(
                "XDP forwarding serves {:?} on {:?}; kernel path: {:?}",
                layout.served,
                layout.lan.keys().collect::<Vec<_>>(),
                layout.kernel
            );
        }
        self.layout = layout;
        self.sync_sockets().await;
    }

    /// Keeps one generation of AF_XDP sockets registered for the first served LAN interface
    /// while `lan_return` runs there; rebinds when the programs or that interface change.
    async fn sync_sockets(&mut self) {
        let Some(to) = self.lan_sockets.clone() else {
            return;
        };
        let Some(xdp) = &mut self.xdp else {
            self.sockets = None;
            return;
        };
        let want = self
            .layout
            .lan
            .keys()
            .find(|n| xdp.lan_attachments().iter().any(|(a, _)| a == n))
            .cloned();
        let current = self
            .sockets
            .as_ref()
            .map(|g| (g.ifname.clone(), g.queues.clone()));
        let registered = xdp.xsk_registrations().map(|(n, q)| (n.to_string(), q));
        if current.is_some()
            && current == registered
            && current.as_ref().map(|c| &c.0) == want.as_ref()
        {
            return;
        }
        if let Some(old) = self.sockets.take() {
            for q in &old.queues {
                // The kernel already dropped closed sockets from the map.
                if let Err(e) = xdp.unregister_xsk(*q) {
                    log::debug!("AF_XDP: unregistering queue {q} of {}: {e}", old.ifname);
                }
            }
            log::info!("AF_XDP return path on {} stopped", old.ifname);
        }
        let Some(ifname) = want else {
            return;
        };
        if self
            .sockets_refused
            .as_ref()
            .is_some_and(|(n, _)| *n == ifname)
        {
            return;
        }
        let bound = match self.netlink.link_index(&ifname).await {
            Ok(idx) => bind_sockets(xdp, &ifname, idx),
            Err(e) => Err(format!("no index for {ifname}: {e:#}")),
        };
        match bound {
            Ok(sockets) => {
                let (stop, stop_rx) = watch::channel(false);
                let queues: Vec<u32> = sockets.iter().map(XdpSocket::queue).collect();
                for socket in sockets {
                    let handed = to.send(LanSocket {
                        socket,
                        stop: stop_rx.clone(),
                    });
                    if let Err(mpsc::error::SendError(s)) = handed {
                        let _ = xdp.unregister_xsk(s.socket.queue());
                    }
                }
                log::info!("replies on {ifname} return through AF_XDP sockets (queues {queues:?})");
                self.sockets_refused = None;
                self.sockets = Some(SocketGeneration {
                    ifname,
                    queues,
                    _stop: stop,
                });
            }
            Err(why) => {
                log::warn!(
                    "AF_XDP return path off on {ifname}: {why}; replies go through the kernel \
                     (XDP_PASS into the TUN)"
                );
                self.sockets_refused = Some((ifname, why));
            }
        }
    }

    /// Where replies `lan_return` de-NATs go, and why, for `tailgate status`.
    fn return_path(&self) -> String {
        const KERNEL: &str = "kernel (XDP_PASS into the TUN)";
        if let Some(g) = &self.sockets {
            let queues: Vec<String> = g.queues.iter().map(ToString::to_string).collect();
            return format!(
                "AF_XDP sockets on {} (queues {})",
                g.ifname,
                queues.join(", ")
            );
        }
        if self.lan_sockets.is_none() {
            return format!("{KERNEL}: no AF_XDP reader in this process");
        }
        match &self.sockets_refused {
            Some((ifname, why)) => format!("{KERNEL}: no AF_XDP sockets on {ifname}: {why}"),
            None => format!("{KERNEL}: no served LAN interface"),
        }
    }

    /// Loads/attaches as needed (LAN interfaces in the given modes) and writes LAN
    /// interfaces, routes and SNAT. 4via6 routes whose LAN runs `lan_return` in generic mode
    /// move to the kernel path: after GRO, replies arrive as super-packets XDP cannot
    /// translate.
    fn install(
        &mut self,
        layout: &mut Layout,
        modes: &BTreeMap<String, AttachPreference>,
    ) -> Result<(), String> {
        if layout.served.is_empty() {
            // Nothing to serve: keep nothing in the kernel.
            self.xdp = None;
            return Ok(());
        }
        let lan: Vec<LanInterface> = layout
            .lan
            .iter()
            .map(|(n, a)| LanInterface::new(n.clone(), *a))
            .collect();
        let xdp = match &mut self.xdp {
            Some(x) => x,
            None => {
                let opts = ForwardOptions {
                    snat_subnet_routes: self.snat,
                    lan_attach: self.lan_attach,
                    ..ForwardOptions::default()
                };
                let mut x = XdpForward::load(&opts).map_err(|e| format!("loading: {e}"))?;
                x.attach_tun(&self.tun)
                    .map_err(|e| format!("attaching tun_forward to {}: {e}", self.tun))?;
                self.xdp.insert(x)
            }
        };
        // LAN side first: a reply must never find its return path missing.
        let attached: Vec<String> = xdp
            .lan_attachments()
            .iter()
            .map(|(n, _)| n.to_string())
            .collect();
        for l in &lan {
            if !attached.contains(&l.ifname) {
                let mode = modes.get(&l.ifname).copied().unwrap_or(self.lan_attach);
                xdp.attach_lan(&l.ifname, mode)
                    .map_err(|e| format!("attaching lan_return to {}: {e}", l.ifname))?;
            }
        }
        // `auto` may have fallen back to generic mode on a driver without native XDP.
        let generic: Vec<String> = xdp
            .lan_attachments()
            .iter()
            .filter(|(_, m)| *m == "generic")
            .map(|(n, _)| n.to_string())
            .collect();
        keep_via_off(layout, &generic.iter().collect::<Vec<_>>());
        xdp.set_lan_interfaces(&lan).map_err(|e| e.to_string())?;
        xdp.set_snat(self.snat).map_err(|e| e.to_string())?;
        let routes: Vec<ForwardRoute> = layout.served.iter().map(|p| (*p).into()).collect();
        xdp.set_routes(&routes).map_err(|e| e.to_string())
    }

    /// Re-resolves LAN interfaces (picking up new ones) and frees idle connection entries;
    /// call every few seconds.
    pub async fn refresh(&mut self, prefs: &RoutingPrefs) {
        self.apply(prefs).await;
        if let Some(x) = &mut self.xdp {
            if let Err(e) = x.expire() {
                log::warn!("XDP forwarding: expiring connections: {e}");
            }
        }
    }

    /// Detaches and unloads the programs (the kernel path takes over).
    pub fn shutdown(&mut self) {
        self.sockets = None;
        self.xdp = None;
        self.layout = Layout::default();
    }

    /// 4via6 prefixes XDP translates (the userspace translator must leave them alone and the
    /// daemon must not coalesce them into super-packets).
    pub fn served_via(&self) -> Vec<Ipv6Net> {
        if self.xdp.is_none() {
            return Vec::new();
        }
        self.layout
            .served
            .iter()
            .filter_map(|p| match p {
                IpNet::V6(v6) => Some(*v6),
                IpNet::V4(_) => None,
            })
            .collect()
    }

    /// Whether the programs are loaded and attached.
    pub fn is_active(&self) -> bool {
        self.xdp.is_some()
    }

    /// A one-line summary for `tailgate status`.
    pub fn summary(&self) -> String {
        if let Some(why) = &self.off {
            return format!("off ({why})");
        }
        match &self.xdp {
            Some(x) => {
                let lans: Vec<String> = x
                    .lan_attachments()
                    .iter()
                    .map(|(n, m)| format!("{n} {m}"))
                    .collect();
                format!(
                    "XDP for {} (tun_forward on {}, lan_return on {})",
                    self.layout
                        .served
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    self.tun,
                    lans.join(", ")
                )
            }
            None if self.layout.kernel.is_empty() => "idle (nothing to serve)".into(),
            None => "idle (no advertised route has a usable LAN interface)".into(),
        }
    }

    /// Full status.
    pub fn status(&self) -> FastPathStatus {
        let kernel_routes = self
            .layout
            .kernel
            .iter()
            .map(|(p, why)| format!("{p}: {why}"))
            .collect();
        let Some(x) = &self.xdp else {
            return FastPathStatus {
                reason: self.off.clone(),
                kernel_routes,
                ..FastPathStatus::default()
            };
        };
        FastPathStatus {
            active: true,
            reason: None,
            tun: x.tun_attachment().map(|(n, m)| format!("{n} ({m})")),
            lan: x
                .lan_attachments()
                .iter()
                .map(|(n, m)| {
                    let snat = self
                        .layout
                        .lan
                        .get(*n)
                        .map(|a| format!(", SNAT {a}"))
                        .unwrap_or_default();
                    format!("{n} ({m}{snat})")
                })
                .collect(),
            routes: self.layout.served.iter().map(ToString::to_string).collect(),
            kernel_routes,
            connections: x.connection_count().unwrap_or(0),
            counters: x.counters().ok().and_then(|c| serde_json::to_value(c).ok()),
            return_path: Some(self.return_path()),
        }
    }
}

/// Receive queues of `ifname` (`rx-N` under `/sys/class/net/<if>/queues`); queue 0 alone when
/// sysfs does not list them.
fn rx_queues(ifname: &str) -> Vec<u32> {
    let dir = format!("/sys/class/net/{ifname}/queues");
    let mut queues: Vec<u32> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("rx-")?.parse().ok())
            .collect(),
        Err(e) => {
            log::debug!("{dir}: {e}; assuming one receive queue");
            Vec::new()
        }
    };
    queues.sort_unstable();
    if queues.is_empty() {
        queues.push(0);
    }
    queues
}

/// Binds one AF_XDP socket per receive queue of `ifname` and registers each with `xdp`;
/// all or nothing (registered ones are unregistered again on failure).
fn bind_sockets(
    xdp: &mut XdpForward,
    ifname: &str,
    ifindex: u32,
) -> Result<Vec<XdpSocket>, String> {
    let mut sockets = Vec::new();
    let mut result = Ok(());
    for queue in rx_queues(ifname) {
        let bound = XdpSocket::bind(ifindex, queue, XdpSocketConfig::default())
            .map_err(|e| e.to_string())
            .and_then(|s| {
                xdp.register_xsk(&s)
                    .map(|()| s)
                    .map_err(|e| format!("registering queue {queue}: {e}"))
            });
        match bound {
            Ok(s) => sockets.push(s),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    match result {
        Ok(()) => Ok(sockets),
        Err(e) => {
            for s in &sockets {
                let _ = xdp.unregister_xsk(s.queue());
            }
            Err(e)
        }
    }
}

/// The advertised routes XDP could serve: IPv4 subnets and 4via6 prefixes.
fn candidates(prefs: &RoutingPrefs) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = prefs
        .advertise_routes
        .iter()
        .filter_map(|r| match r {
            IpNet::V4(v4) if v4.prefix_len() > 0 => Some(Candidate {
                advertised: *r,
                target: *v4,
            }),
            _ => None,
        })
        .collect();
    for site in &prefs.via {
        let id = SiteId::new(site.site);
        for r in &site.routes {
            if let Ok(v6) = via6::map_via(id, *r) {
                out.push(Candidate {
                    advertised: IpNet::V6(v6),
                    target: *r,
                });
            }
        }
    }
    out
}

/// A host address inside `net` to ask the kernel about (the first one after the network).
fn probe_address(net: Ipv4Net) -> Ipv4Addr {
    let n = net.trunc();
    if n.prefix_len() >= 31 {
        n.network()
    } else {
        Ipv4Addr::from(u32::from(n.network()) + 1)
    }
}

/// Moves 4via6 routes whose LAN interface runs `lan_return` in generic mode to the kernel
/// path: after GRO, their replies arrive as super-packets XDP cannot translate.
fn keep_via_off(layout: &mut Layout, generic: &[&String]) {
    let lan_of = &layout.lan_of;
    let (keep, moved): (Vec<IpNet>, Vec<IpNet>) = layout.served.iter().partition(|p| {
        !(matches!(p, IpNet::V6(_)) && lan_of.get(*p).is_some_and(|l| generic.contains(&l)))
    });
    for p in moved {
        let lan = layout.lan_of.remove(&p).unwrap_or_default();
        layout.kernel.push((
            p,
            format!("lan_return runs in generic mode on {lan}, where 4via6 replies arrive merged by GRO; translated in userspace"),
        ));
    }
    layout.served = keep;
}

/// Decides which candidates XDP serves, given where the kernel routes each.
fn plan(
    candidates: &[Candidate],
    resolved: &BTreeMap<Candidate, Result<Resolved, String>>,
    tun: &str,
    wan: Option<&str>,
    lan_only: Option<&str>,
) -> Layout {
    let mut layout = Layout::default();
    for c in candidates {
        let verdict = match resolved.get(c) {
            None => Err("not resolved".to_string()),
            Some(Err(e)) => Err(format!("no route: {e}")),
            Some(Ok(r)) if r.ifname == tun => Err(format!("routed into {tun}")),
            Some(Ok(r)) if r.ifname == "lo" => Err("routed to loopback".to_string()),
            Some(Ok(r)) if Some(r.ifname.as_str()) == wan => Err(format!(
                "{} also carries the tunnel (wan_ingress runs there)",
                r.ifname
            )),
            Some(Ok(r)) if lan_only.is_some_and(|l| l != r.ifname) => Err(format!(
                "routed via {}, not the configured lan_interface {}",
                r.ifname,
                lan_only.unwrap_or_default()
            )),
            Some(Ok(r)) => match layout.lan.get(&r.ifname) {
                Some(a) if *a != r.source => Err(format!(
                    "{} has source {} here but {a} for another route",
                    r.ifname, r.source
                )),
                _ => Ok(r),
            },
        };
        match verdict {
            Ok(r) => {
                layout.lan.insert(r.ifname.clone(), r.source);
                layout.lan_of.insert(c.advertised, r.ifname.clone());
                layout.served.push(c.advertised);
            }
            Err(why) => layout.kernel.push((c.advertised, why)),
        }
    }
    layout.served.sort();
    layout.served.dedup();
    layout
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefs::ViaSite;

    fn ok(ifname: &str, source: &str) -> Result<Resolved, String> {
        Ok(Resolved {
            ifname: ifname.into(),
            source: source.parse().unwrap(),
        })
    }

    #[test]
    fn receive_queues_come_from_sysfs_or_default_to_queue_zero() {
        assert_eq!(rx_queues("no-such-interface"), vec![0]);
        let lo = rx_queues("lo");
        assert!(
            !lo.is_empty() && lo.windows(2).all(|w| w[0] < w[1]),
            "{lo:?}"
        );
    }

    #[test]
    fn status_names_the_return_path() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let Ok(netlink) = rt.block_on(async { Netlink::connect() }) else {
            return;
        };
        let fp = FastPath::new("tg0", netlink, None, None, None, AttachPreference::Auto);
        assert_eq!(
            fp.return_path(),
            "kernel (XDP_PASS into the TUN): no AF_XDP reader in this process"
        );
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut fp = fp.with_lan_sockets(tx);
        assert_eq!(
            fp.return_path(),
            "kernel (XDP_PASS into the TUN): no served LAN interface"
        );
        fp.sockets_refused = Some(("lan0".into(), "binding refused".into()));
        assert!(fp
            .return_path()
            .ends_with("no AF_XDP sockets on lan0: binding refused"));
        let (stop, _) = watch::channel(false);
        fp.sockets = Some(SocketGeneration {
            ifname: "lan0".into(),
            queues: vec![0, 1],
            _stop: stop,
        });
        assert_eq!(fp.return_path(), "AF_XDP sockets on lan0 (queues 0, 1)");
    }

    #[test]
    fn candidates_are_ipv4_subnets_and_via_sites() {
        let prefs = RoutingPrefs {
            advertise_routes: vec![
                "192.168.1.0/24".parse().unwrap(),
                "2001:db8::/64".parse().unwrap(),
            ],
            via: vec![ViaSite {
                site: 7,
                routes: vec!["10.1.1.0/24".parse().unwrap()],
            }],
            advertise_exit_node: true,
            ..RoutingPrefs::default()
        };
        let c = candidates(&prefs);
        let adv: Vec<String> = c.iter().map(|c| c.advertised.to_string()).collect();
        assert_eq!(
            adv,
            ["192.168.1.0/24", "fd7a:115c:a1e0:b1a:0:7:a01:100/120"]
        );
        assert_eq!(c[1].target.to_string(), "10.1.1.0/24");
    }

    #[test]
    fn probe_addresses_are_inside_the_network() {
        assert_eq!(
            probe_address("192.168.1.77/24".parse().unwrap()),
            Ipv4Addr::new(192, 168, 1, 1)
        );
        assert_eq!(
            probe_address("10.0.0.9/32".parse().unwrap()),
            Ipv4Addr::new(10, 0, 0, 9)
        );
    }

    #[test]
    fn plan_serves_lan_routes_and_explains_the_rest() {
        let c = |a: &str, t: &str| Candidate {
            advertised: a.parse().unwrap(),
            target: t.parse().unwrap(),
        };
        let lan = c("192.168.1.0/24", "192.168.1.0/24");
        let via = c("fd7a:115c:a1e0:b1a:0:7:a01:100/120", "10.1.1.0/24");
        let tunneled = c("172.16.0.0/16", "172.16.0.0/16");
        let wan = c("198.51.100.0/24", "198.51.100.0/24");
        let missing = c("10.9.0.0/16", "10.9.0.0/16");
        let resolved: BTreeMap<_, _> = [
            (lan, ok("eth1", "192.168.1.1")),
            (via, ok("eth2", "10.1.1.1")),
            (tunneled, ok("tailgate0", "100.64.0.2")),
            (wan, ok("eth0", "198.51.100.7")),
            (missing, Err("no route to 10.9.0.1".into())),
        ]
        .into_iter()
        .collect();
        let all = [lan, via, tunneled, wan, missing];
        let l = plan(&all, &resolved, "tailgate0", Some("eth0"), None);
        assert_eq!(l.served, vec![lan.advertised, via.advertised]);
        assert_eq!(l.lan.len(), 2);
        assert_eq!(l.lan["eth1"], Ipv4Addr::new(192, 168, 1, 1));
        let why: Vec<&str> = l.kernel.iter().map(|(_, w)| w.as_str()).collect();
        assert_eq!(why.len(), 3);
        assert!(why[0].contains("routed into tailgate0"), "{why:?}");
        assert!(why[1].contains("wan_ingress"), "{why:?}");
        assert!(why[2].starts_with("no route"), "{why:?}");
    }

    #[test]
    fn via_routes_leave_generic_mode_lans() {
        let c = |a: &str, t: &str| Candidate {
            advertised: a.parse().unwrap(),
            target: t.parse().unwrap(),
        };
        let lan = c("192.168.1.0/24", "192.168.1.0/24");
        let via = c("fd7a:115c:a1e0:b1a:0:7:a01:100/120", "10.1.1.0/24");
        let resolved: BTreeMap<_, _> = [
            (lan, ok("veth1", "192.168.1.1")),
            (via, ok("veth1", "192.168.1.1")),
        ]
        .into_iter()
        .collect();
        let mut l = plan(&[lan, via], &resolved, "tg0", None, None);
        let native = l.clone();
        keep_via_off(&mut l, &[&"veth1".to_string()]);
        assert_eq!(l.served, vec![lan.advertised]);
        assert!(
            l.kernel[0].1.contains("generic mode on veth1"),
            "{:?}",
            l.kernel
        );
        let mut n = native.clone();
        keep_via_off(&mut n, &[&"eth9".to_string()]);
        assert_eq!(n, native, "other interfaces' generic mode does not matter");
    }

    #[test]
    fn plan_keeps_one_snat_address_per_interface() {
        let a = Candidate {
            advertised: "192.168.1.0/24".parse().unwrap(),
            target: "192.168.1.0/24".parse().unwrap(),
        };
        let b = Candidate {
            advertised: "192.168.2.0/24".parse().unwrap(),
            target: "192.168.2.0/24".parse().unwrap(),
        };
        let resolved: BTreeMap<_, _> = [
            (a, ok("eth1", "192.168.1.1")),
            (b, ok("eth1", "192.168.2.1")),
        ]
        .into_iter()
        .collect();
        let l = plan(&[a, b], &resolved, "tailgate0", None, None);
        assert_eq!(l.served, vec![a.advertised]);
        assert!(l.kernel[0].1.contains("another route"), "{:?}", l.kernel);
        // With lan_interface set, other interfaces stay on the kernel path.
        let l = plan(&[a], &resolved, "tailgate0", None, Some("eth2"));
        assert!(l.served.is_empty());
        assert!(
            l.kernel[0].1.contains("lan_interface eth2"),
            "{:?}",
            l.kernel
        );
    }
}
