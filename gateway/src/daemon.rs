//! `tailgate daemon`: brings the interface up from a config file, runs the data path and the
//! local APIs, and tears everything down on SIGINT/SIGTERM.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;

use crate::api::status::{PeerStatus, XdpStatus};
use crate::api::unix_socket::BoundSocket;
use crate::api::{ExitNode, Request, Response, Status};
use crate::config::{Config, XdpMode};
use crate::device::{datapath, lock, Device};
use crate::dns::os::{effective_resolvers, OsDns, OsDnsSettings};
use crate::dns::service::DnsService;
use crate::dns::{DnsView, Resolvers};
use crate::forwarding::{FastPath, Routing, RoutingStatus};
use crate::io::tun::Tun;
use crate::io::udp::WgSocket;
use crate::netcfg::{InstalledRoutes, Netlink};
use crate::netstack::proxy::{self, Dialer};
use crate::netstack::Netstack;
use crate::node_control::{ControlMode, DaemonParts};
use crate::uapi;
use crate::xdp::{AttachPreference, XdpForward, XdpWanIngress};

/// Options of `tailgate daemon` beyond the config file.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The TOML config file.
    pub config: PathBuf,
    /// Control socket for the CLI.
    pub socket: PathBuf,
    /// Run without any XDP program.
    pub no_xdp: bool,
    /// Run without TUN offloads and UDP GSO/GRO (one packet per syscall).
    pub no_offload: bool,
    /// XDP attach mode overriding `interface.xdp`.
    pub xdp: Option<XdpMode>,
    /// Where to serve `/metrics` and `/healthz`, overriding `interface.metrics_listen`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Point the system's resolver at MagicDNS, overriding `dns.accept_dns`.
    pub accept_dns: Option<bool>,
    /// TUN device name overriding `interface.name`, or [`USERSPACE_NETWORKING`].
    pub tun: Option<String>,
    /// Serve a SOCKS5 proxy into the tailnet on this address.
    pub socks5_server: Option<std::net::SocketAddr>,
    /// Serve an HTTP proxy into the tailnet on this address.
    pub http_proxy_listen: Option<std::net::SocketAddr>,
}

/// The `--tun` value for userspace networking (Tailscale's name): no TUN device, an
/// embedded TCP/IP stack instead.
pub const USERSPACE_NETWORKING: &str = "userspace-networking";

/// The XDP program, or why there is none.
struct XdpState {
    program: Option<XdpWanIngress>,
    interface: Option<String>,
    reason: Option<String>,
}

/// Runs the daemon until SIGINT/SIGTERM or a fatal data-path error.
pub async fn run(mut opts: DaemonOptions) -> Result<()> {
    let mut cfg = Config::load(&opts.config)?;
    // A resolv.conf left behind by a daemon that was killed goes back first, whatever fails
    // later and in every mode.
    if let Err(e) = crate::dns::os::recover(&os_dns_settings(&cfg)) {
        log::warn!("restoring the system's resolv.conf: {e:#}");
    }
    let userspace = opts.tun.as_deref() == Some(USERSPACE_NETWORKING);
    if let Some(name) = opts.tun.as_ref().filter(|_| !userspace) {
        cfg.interface.name = name.clone();
    }
    if userspace {
        // No TUN: nothing for XDP to attach to, and no kernel forwarding to drive.
        opts.no_xdp = true;
    }
    let iface = &cfg.interface;
    let (tun, netstack) = if userspace {
        let (stack, tun) = Netstack::start(&iface.addresses, iface.mtu);
        log::info!("userspace networking: no TUN device, an embedded TCP/IP stack instead");
        (tun, Some(stack))
    } else {
        let tun = Tun::create(&iface.name, !opts.no_offload).with_context(|| {
            format!(
                "creating TUN device {} (needs root or CAP_NET_ADMIN and /dev/net/tun; or run \
                 with --tun={USERSPACE_NETWORKING})",
                iface.name
            )
        })?;
        (tun, None)
    };
    let netlink = Netlink::connect()?;
    let index = match &netstack {
        Some(_) => 0,
        None => netlink.link_index(tun.name()).await?,
    };
    let socket = WgSocket::bind(iface.listen_port, !opts.no_offload)
        .await
        .with_context(|| format!("binding UDP port {}", iface.listen_port))?;
    let listen_port = socket.local_port()?;
    let dev = Arc::new(Device::new(
        iface.name.clone(),
        tun,
        socket,
        iface.private_key,
        listen_port,
    ));
    dev.add_configured_peers(&cfg.peers)
        .map_err(|e| anyhow::anyhow!("{}: {e}", opts.config.display()))?;
    if netstack.is_none() {
        netlink
            .configure_interface(index, iface.mtu, &iface.addresses)
            .await
            .with_context(|| format!("configuring {}", iface.name))?;
    }
    if cfg.dns.enabled && netstack.is_none() {
        netlink
            .add_service_addresses(index, &DnsService::addresses())
            .await
            .with_context(|| format!("adding the MagicDNS addresses to {}", iface.name))?;
    }
    let os_dns = match &netstack {
        Some(_) => Err("userspace networking".to_string()),
        None => prepare_os_dns(&cfg, &opts, &iface.name),
    };
    let resolvers = match &os_dns {
        Ok(os) => effective_resolvers(
            &cfg.dns.resolvers,
            cfg.dns.override_local_dns,
            &os.system_nameservers(),
        ),
        Err(_) => cfg.dns.resolvers.clone(),
    };
    let dns = Arc::new(start_dns(
        &cfg,
        resolvers,
        netstack.as_ref().map(|_| {
            "userspace networking: no TUN for 100.100.100.100 (the proxies resolve peer names)"
                .to_string()
        }),
    ));
    let routes = Arc::new(tokio::sync::Mutex::new(match &netstack {
        Some(_) => InstalledRoutes::userspace(netlink.clone()),
        None => InstalledRoutes::new(netlink.clone(), index),
    }));
    routes.lock().await.sync(&dev.allowed_networks()).await?;
    let xdp = attach_xdp(&cfg, &netlink, listen_port, opts.no_xdp, opts.xdp).await;
    // Replies lan_return de-NATs come back through AF_XDP sockets the fast path binds.
    let (lan_sockets, lan_sockets_rx) = tokio::sync::mpsc::unbounded_channel();
    let fast =
        fast_path(&cfg, &opts, &netlink, xdp.interface.clone()).with_lan_sockets(lan_sockets);
    let xdp = Arc::new(Mutex::new(xdp));
    let mut routing = Routing::new(&iface.name, index, netlink.clone(), fast);
    if netstack.is_some() {
        routing.set_userspace();
    }
    if let Err(e) = routing.apply(&dev, &routes, cfg.routing.clone()).await {
        routing.teardown().await;
        return Err(e.context(format!("{}: routing settings", opts.config.display())));
    }
    let routing = Arc::new(tokio::sync::Mutex::new(routing));
    let control = cfg.control.clone().map(|c| {
        ControlMode::new(
            c,
            DaemonParts {
                dev: dev.clone(),
                routes: routes.clone(),
                routing: routing.clone(),
                netlink: netlink.clone(),
                index,
                mtu: iface.mtu,
                dns: dns.feed(),
                netstack: netstack.clone(),
            },
        )
    });

    let metrics_addr = opts.metrics_listen.or(iface.metrics_listen);
    let metrics_listener = match metrics_addr {
        Some(a) => Some(crate::metrics::bind(a).await?),
        None => None,
    };
    let (_uapi_file, uapi_listener) = BoundSocket::bind(&uapi::server::socket_path(&iface.name))?;
    let (_api_file, api_listener) = BoundSocket::bind(&opts.socket)?;
    log::info!(
        "{} up: public key {}, UDP port {listen_port}, {} peer(s), control socket {}",
        iface.name,
        iface.private_key.public_key().to_base64(),
        cfg.peers.len(),
        opts.socket.display()
    );

    let dialer = Dialer::new(netstack.clone(), dev.clone(), dns.names());
    let proxies = [
        ("SOCKS5", opts.socks5_server, true),
        ("HTTP", opts.http_proxy_listen, false),
    ];
    let mut proxy_listeners = Vec::new();
    for (what, addr, socks) in proxies {
        if let Some(addr) = addr {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("{what} proxy: listening on {addr}"))?;
            log::info!(
                "{what} proxy into the tailnet on {}",
                listener.local_addr()?
            );
            proxy_listeners.push((listener, socks));
        }
    }

    let mut tasks = JoinSet::new();
    for (listener, socks) in proxy_listeners {
        let dialer = dialer.clone();
        tasks.spawn(async move {
            if socks {
                proxy::serve_socks5(listener, dialer).await;
            } else {
                proxy::serve_http(listener, dialer).await;
            }
            Ok(())
        });
    }
    tasks.spawn(named("tun reader", datapath::tun_to_udp(dev.clone())));
    tasks.spawn(async_ok(read_lan_sockets(dev.clone(), lan_sockets_rx)));
    tasks.spawn(named("udp reader", datapath::udp_to_tun(dev.clone())));
    tasks.spawn(async_ok(datapath::timers(dev.clone())));
    tasks.spawn(async_ok(refresh_routing(routing.clone(), dev.clone())));
    tasks.spawn(async_ok(uapi::server::serve(
        uapi_listener,
        dev.clone(),
        routes.clone(),
    )));
    let api = ApiContext {
        dev: dev.clone(),
        xdp: xdp.clone(),
        routes: routes.clone(),
        routing: routing.clone(),
        mtu: iface.mtu,
        control: control.clone(),
        dns: dns.clone(),
    };
    if let Some(listener) = metrics_listener {
        let api = api.clone();
        log::info!(
            "serving /metrics and /healthz on {}",
            listener.local_addr()?
        );
        tasks.spawn(async_ok(crate::metrics::serve(listener, move || {
            let api = api.clone();
            async move {
                match api.answer(Request::Status).await {
                    Response::Status(st) => Some(*st),
                    _ => None,
                }
            }
        })));
    }
    tasks.spawn(async_ok(crate::api::serve(api_listener, move |req| {
        let api = api.clone();
        async move { api.answer(req).await }
    })));

    if let Some(c) = &control {
        let c = c.clone();
        tokio::spawn(async move { c.resume().await });
    }

    match os_dns {
        Ok(os) => dns.manage_os(os, cfg.dns.override_local_dns),
        Err(why) => dns.os_off(why),
    }

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let outcome = tokio::select! {
        _ = sigint.recv() => { log::info!("SIGINT: shutting down"); Ok(()) }
        _ = sigterm.recv() => { log::info!("SIGTERM: shutting down"); Ok(()) }
        Some(done) = tasks.join_next() => match done {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("data path task failed: {e}")),
        },
    };
    if let Some(c) = &control {
        c.shutdown().await;
    }
    tasks.shutdown().await;
    dns.restore_os();
    routing.lock().await.teardown().await;
    if let Err(e) = routes.lock().await.clear().await {
        log::warn!("removing routes: {e:#}");
    }
    lock(&xdp).program.take();
    log::info!("{} down", iface.name);
    outcome
}

async fn named(
    what: &'static str,
    f: impl std::future::Future<Output = std::io::Result<()>>,
) -> Result<()> {
    f.await.with_context(|| what)
}

/// Runs one [`datapath::xsk_to_udp`] reader per AF_XDP socket the fast path hands over, for
/// as long as the daemon runs (readers stop with their socket's generation).
async fn read_lan_sockets(
    dev: Arc<Device>,
    mut sockets: tokio::sync::mpsc::UnboundedReceiver<crate::forwarding::LanSocket>,
) {
    let mut readers = JoinSet::new();
    loop {
        tokio::select! {
            got = sockets.recv() => match got {
                Some(s) => {
                    let dev = dev.clone();
                    readers.spawn(async move {
                        let (ifindex, queue) = (s.socket.ifindex(), s.socket.queue());
                        if let Err(e) = datapath::xsk_to_udp(dev, s.socket, s.stop).await {
                            log::warn!(
                                "AF_XDP reader for ifindex {ifindex} queue {queue} stopped: {e}; \
                                 that queue's replies go through the kernel"
                            );
                        }
                    });
                }
                None => break,
            },
            Some(_) = readers.join_next() => {}
        }
    }
    // The fast path is gone (shutting down): let the readers finish on their own.
    while readers.join_next().await.is_some() {}
    std::future::pending::<()>().await;
}

async fn async_ok(f: impl std::future::Future<Output = ()>) -> Result<()> {
    f.await;
    Ok(())
}

/// Where the system's resolv.conf is, and where its original is kept while tailgate manages it.
fn os_dns_settings(cfg: &Config) -> OsDnsSettings {
    let d = &cfg.dns;
    let state_dir = cfg.control.as_ref().map_or_else(
        || std::path::PathBuf::from(crate::config::DEFAULT_STATE_DIR),
        |c| c.state_dir.clone(),
    );
    OsDnsSettings {
        resolv_conf: d.resolv_conf.clone(),
        backup: d
            .resolv_conf_backup
            .clone()
            .unwrap_or_else(|| state_dir.join(crate::config::RESOLV_CONF_BACKUP)),
    }
}

/// How the system's resolver will be pointed at MagicDNS, or why it is left alone. A
/// resolv.conf left behind by a crashed daemon is put back either way.
fn prepare_os_dns(cfg: &Config, opts: &DaemonOptions, ifname: &str) -> Result<OsDns, String> {
    let d = &cfg.dns;
    let settings = os_dns_settings(cfg);
    let off = if !d.enabled {
        Some("[dns] enabled = false")
    } else if !opts.accept_dns.unwrap_or(d.accept_dns) {
        Some("accept_dns is off")
    } else {
        None
    };
    if let Some(why) = off {
        if let Err(e) = crate::dns::os::recover(&settings) {
            log::warn!("restoring {}: {e:#}", settings.resolv_conf.display());
        }
        return Err(why.into());
    }
    OsDns::prepare(&settings, ifname).map_err(|e| {
        log::warn!("leaving the system's DNS alone: {e:#}");
        format!("{e:#}")
    })
}

/// The MagicDNS resolver: static mode answers the configured peers' names at once; control
/// mode starts empty and gets a view with every netmap. With `off`, only the names are kept
/// (for the proxies), without a listener.
fn start_dns(cfg: &Config, resolvers: Resolvers, off: Option<String>) -> DnsService {
    let d = &cfg.dns;
    if !d.enabled {
        return DnsService::start(
            DnsView::default(),
            resolvers,
            Some("[dns] enabled = false".into()),
        );
    }
    let initial = if cfg.control.is_some() {
        DnsView {
            split: resolvers.split.clone(),
            global: resolvers.global.clone(),
            ..DnsView::default()
        }
    } else {
        let hostname = d.hostname.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "node".into())
        });
        let own: Vec<std::net::IpAddr> = cfg.interface.addresses.iter().map(|a| a.addr()).collect();
        DnsView::from_static_peers(&d.domain, Some(&hostname), &own, &cfg.peers, &resolvers)
    };
    DnsService::start(initial, resolvers, off)
}

/// How often LAN interfaces are re-resolved and idle fast-path connections freed.
const ROUTING_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

async fn refresh_routing(routing: Arc<tokio::sync::Mutex<Routing>>, dev: Arc<Device>) {
    let mut tick = tokio::time::interval(ROUTING_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        routing.lock().await.refresh(&dev).await;
    }
}

/// The XDP forwarding fast path, off (with the reason) under the same switches as
/// `wan_ingress` or when the programs cannot be loaded here.
fn fast_path(
    cfg: &Config,
    opts: &DaemonOptions,
    netlink: &Netlink,
    wan: Option<String>,
) -> FastPath {
    let mode = opts.xdp.unwrap_or(cfg.interface.xdp);
    let off = if opts.no_xdp {
        Some("--no-xdp given".to_string())
    } else if mode == XdpMode::Off {
        Some("XDP mode \"off\" (config or --xdp)".to_string())
    } else if !cfg.routing.is_router() {
        None // loaded on demand, when `tailgate set` makes this node a router
    } else {
        XdpForward::probe()
            .err()
            .map(|e| format!("cannot load the programs: {e}"))
    };
    let pref = match mode {
        XdpMode::Native => AttachPreference::Native,
        XdpMode::Generic => AttachPreference::Generic,
        XdpMode::Auto | XdpMode::Off => AttachPreference::Auto,
    };
    FastPath::new(
        &cfg.interface.name,
        netlink.clone(),
        wan,
        cfg.interface.lan_interface.clone(),
        off,
        pref,
    )
}

/// Attaches `wan_ingress` where the tunnel's UDP traffic arrives, or explains why not.
async fn attach_xdp(
    cfg: &Config,
    netlink: &Netlink,
    listen_port: u16,
    no_xdp: bool,
    xdp_override: Option<XdpMode>,
) -> XdpState {
    let off = |reason: String| {
        log::warn!("XDP disabled: {reason}; running without the wan_ingress fast path");
        XdpState {
            program: None,
            interface: None,
            reason: Some(reason),
        }
    };
    let mode = xdp_override.unwrap_or(cfg.interface.xdp);
    let pref = match (no_xdp, mode) {
        (true, _) => return off("--no-xdp given".into()),
        (_, XdpMode::Off) => return off("XDP mode \"off\" (config or --xdp)".into()),
        (_, XdpMode::Auto) => AttachPreference::Auto,
        (_, XdpMode::Native) => AttachPreference::Native,
        (_, XdpMode::Generic) => AttachPreference::Generic,
    };
    let ifname = match wan_interface(cfg, netlink).await {
        Ok(n) => n,
        Err(e) => return off(format!("{e:#}")),
    };
    if pref == AttachPreference::Auto && netlink.is_veth(&ifname).await.unwrap_or(false) {
        return off(format!(
            "{ifname} is a veth, where native XDP makes the kernel copy every packet and split \
             UDP GSO batches (about 20% less tunnel throughput); set interface.xdp = \"native\" \
             or --xdp native to attach it anyway"
        ));
    }
    match XdpWanIngress::attach(&ifname, listen_port, pref) {
        Ok(p) => {
            log::info!(
                "XDP wan_ingress attached to {ifname} in {} mode",
                p.attach_mode()
            );
            XdpState {
                program: Some(p),
                interface: Some(ifname),
                reason: None,
            }
        }
        Err(e) => off(format!("attaching wan_ingress to {ifname}: {e}")),
    }
}

/// The interface that carries the tunnel's UDP traffic: the configured one, else the one
/// toward the first peer endpoint, else the only non-loopback interface that is up.
async fn wan_interface(cfg: &Config, netlink: &Netlink) -> Result<String> {
    if let Some(name) = &cfg.interface.xdp_interface {
        return Ok(name.clone());
    }
    if let Some(ep) = cfg.peers.iter().find_map(|p| p.endpoint) {
        return netlink.interface_toward(ep).await;
    }
    let candidates: Vec<String> = netlink
        .up_interfaces()
        .await?
        .into_iter()
        .filter(|n| *n != cfg.interface.name)
        .collect();
    match candidates.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(anyhow::anyhow!(
            "cannot tell which interface carries WireGuard traffic (candidates: {}); set interface.xdp_interface",
            candidates.join(", ")
        )),
    }
}

/// What the control-socket handler needs.
#[derive(Clone)]
struct ApiContext {
    dev: Arc<Device>,
    xdp: Arc<Mutex<XdpState>>,
    routes: Arc<tokio::sync::Mutex<InstalledRoutes>>,
    routing: Arc<tokio::sync::Mutex<Routing>>,
    mtu: u16,
    control: Option<Arc<ControlMode>>,
    dns: Arc<DnsService>,
}

impl ApiContext {
    async fn answer(&self, req: Request) -> Response {
        match req {
            Request::Status => {
                let routing = self.routing.lock().await.report();
                let mut st = status(&self.dev, &self.xdp, self.mtu, routing);
                st.dns = self.dns.status().stats;
                if let Some(c) = &self.control {
                    c.annotate(&mut st.peers);
                    st.control = Some(c.status());
                    st.peer_relay = c.peer_relay_status();
                }
                Response::Status(Box::new(st))
            }
            Request::Up(up) => match &self.control {
                Some(c) => match c.up(*up).await {
                    Ok(r) => Response::Up(Box::new(r)),
                    Err(e) => Response::Error(e),
                },
                None => Response::Error(NOT_CONTROL_MODE.into()),
            },
            Request::Down => match &self.control {
                Some(c) => match c.down().await {
                    Ok(()) => Response::Down,
                    Err(e) => Response::Error(e),
                },
                None => Response::Error(NOT_CONTROL_MODE.into()),
            },
            Request::Set { change } => {
                if change.route_priority.is_some() && self.control.is_none() {
                    return Response::Error(
                        "--route-priority is for HA routers of a coordination server; \
                         this daemon runs with static peers"
                            .into(),
                    );
                }
                let relay_change =
                    change.advertise_peer_relay.is_some() || change.peer_relay_port.is_some();
                if relay_change && self.control.is_none() {
                    return Response::Error(
                        "--advertise-peer-relay relays for the nodes of a coordination \
                         server's tailnet; this daemon runs with static peers"
                            .into(),
                    );
                }
                let mut routing = self.routing.lock().await;
                let before_relay = routing.status().prefs.peer_relay_port;
                let prefs = change.applied_to(&routing.status().prefs);
                if let Some(c) = self.control.as_ref().filter(|_| relay_change) {
                    if let Err(e) = c.set_peer_relay(prefs.peer_relay_port).await {
                        return Response::Error(e);
                    }
                }
                match routing.apply(&self.dev, &self.routes, prefs).await {
                    Ok(()) => {
                        let prefs = routing.status().prefs.clone();
                        if let Some(c) = &self.control {
                            c.preferences_changed(&prefs, change.route_priority).await;
                        }
                        Response::Set(Box::new(prefs))
                    }
                    Err(e) => {
                        if let Some(c) = self.control.as_ref().filter(|_| relay_change) {
                            let _ = c.set_peer_relay(before_relay).await;
                        }
                        let before = routing.status().prefs.clone();
                        if let Err(e2) = routing.apply(&self.dev, &self.routes, before).await {
                            log::warn!("restoring routing after a refused change: {e2:#}");
                        }
                        Response::Error(format!("{e:#}"))
                    }
                }
            }
            Request::ExitNodes => Response::ExitNodes(exit_nodes(&self.dev)),
            Request::DnsStatus => Response::DnsStatus(Box::new(self.dns.status())),
            Request::DnsQuery { name, rtype } => match self.dns.query(&name, &rtype).await {
                Ok(a) => Response::DnsAnswer(Box::new(a)),
                Err(e) => Response::Error(e),
            },
            Request::Ping { peer } => match self.ping(&peer).await {
                Ok(p) => Response::Pong(Box::new(p)),
                Err(e) => Response::Error(e),
            },
            Request::Netcheck => {
                let relay = self.dev.paths.get().map(|p| p.relay().clone());
                match crate::netcheck::for_node(relay).await {
                    Ok(r) => Response::Netcheck(Box::new(r)),
                    Err(e) => Response::Error(e),
                }
            }
        }
    }

    /// One discovery ping to `spec` (see [`Request::Ping`]).
    async fn ping(&self, spec: &str) -> Result<crate::api::PongInfo, String> {
        let Some(paths) = self.dev.paths.get().cloned() else {
            return Err(
                "tailgate ping needs control mode with a relay map (the coordination \
                        server's --derp-map); use ping(8) for ICMP through the tunnel"
                    .into(),
            );
        };
        let (key, name, ip) = {
            let st = self.dev.state();
            let p = st.resolve_peer(spec)?;
            let s = crate::device::lock(&p.settings);
            let ip = s.tailnet_v4().map(|a| a.to_string()).unwrap_or_default();
            (
                p.public_key,
                s.name.clone().unwrap_or_else(|| p.public_key.short()),
                ip,
            )
        };
        let (via, rtt) = paths.ping(&key, std::time::Duration::from_secs(2)).await?;
        Ok(crate::api::PongInfo {
            name,
            ip,
            direct: via.is_direct(),
            via: via.to_string(),
            rtt_ms: rtt.as_secs_f64() * 1e3,
        })
    }
}

const NOT_CONTROL_MODE: &str =
    "the daemon runs with static peers; add a [control] table to its config to use `tailgate up`/`down`";

/// Peers that offer exit-node service, as `tailgate exit-node list` shows them.
fn exit_nodes(dev: &Device) -> Vec<ExitNode> {
    let st = dev.state();
    let now = SystemTime::now();
    let mut list: Vec<ExitNode> = st
        .peers
        .values()
        .filter_map(|p| {
            let s = lock(&p.settings).clone();
            if !s.offers_exit {
                return None;
            }
            let ip = s
                .tailnet_v4()
                .map(|v4| v4.to_string())
                .or_else(|| s.allowed_ips.first().map(|n| n.addr().to_string()))
                .unwrap_or_default();
            let recent = lock(&p.tunnel)
                .stats()
                .last_handshake
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|d| d.as_secs() < 180);
            let status = if st.client.exit_peer == Some(p.public_key) {
                "selected"
            } else if recent {
                "online"
            } else {
                "idle"
            };
            Some(ExitNode {
                ip,
                hostname: s.name.clone().unwrap_or_else(|| p.public_key.short()),
                country: None,
                city: None,
                status: status.into(),
            })
        })
        .collect();
    list.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    list
}

fn status(dev: &Device, xdp: &Mutex<XdpState>, mtu: u16, routing: RoutingStatus) -> Status {
    let snap = dev.snapshot();
    let now = SystemTime::now();
    let xdp = lock(xdp);
    let (mode, counters) = match &xdp.program {
        Some(p) => {
            let counters = p
                .counters()
                .ok()
                .and_then(|c| serde_json::to_value(c).ok())
                .and_then(|v| v.as_object().cloned());
            (Some(p.attach_mode().to_string()), counters)
        }
        None => (None, None),
    };
    Status {
        interface: dev.name.clone(),
        public_key: dev.state().public_key.to_base64(),
        listen_port: snap.listen_port,
        mtu,
        datapath: datapath_description(dev),
        xdp: XdpStatus {
            attached: xdp.program.is_some(),
            interface: xdp.interface.clone(),
            mode,
            reason: xdp.reason.clone(),
            counters,
        },
        drops: dev.counters.snapshot(),
        batching: dev.counters.batching.snapshot(),
        filter: dev.filter.status(),
        dns: None,
        routing,
        peers: snap
            .peers
            .into_iter()
            .map(|p| PeerStatus {
                public_key: p.public_key.to_base64(),
                endpoint: p.endpoint,
                allowed_ips: p.allowed_ips.iter().map(ToString::to_string).collect(),
                latest_handshake_secs_ago: p
                    .last_handshake
                    .map(|t| now.duration_since(t).map(|d| d.as_secs()).unwrap_or(0)),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                rx_packets: p.rx_packets,
                tx_packets: p.tx_packets,
                handshakes: p.handshakes,
                persistent_keepalive: p.persistent_keepalive,
                name: None,
                addresses: None,
                online: None,
                primary_routes: None,
                standby_routes: None,
                os: None,
                path: None,
                direct_rtt_ms: None,
            })
            .collect(),
        control: None,
        relays: dev
            .paths
            .get()
            .map(|p| p.relay().status())
            .unwrap_or_default(),
        peer_relay: None,
    }
}

/// Says how packets move between the TUN and the UDP socket.
fn datapath_description(dev: &Device) -> String {
    let tun = dev.tun.offloads();
    let mut parts = vec!["userspace".to_string()];
    parts.push(match (tun.tso, tun.uso) {
        (true, true) => "TUN offload (TSO+USO super-packets, coalesced writes)".into(),
        (true, false) => "TUN offload (TSO super-packets, coalesced writes)".into(),
        _ => "TUN one packet per syscall".into(),
    });
    parts.push(match (dev.socket.gso_enabled(), dev.socket.gro_enabled()) {
        (true, true) => "UDP GSO+GRO".into(),
        (true, false) => "UDP GSO".into(),
        (false, true) => "UDP GRO".into(),
        (false, false) => "UDP one datagram per syscall".into(),
    });
    parts.join(", ")
}
