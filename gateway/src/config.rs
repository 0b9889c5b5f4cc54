//! The node's TOML configuration: parsing, validation and clear errors.
//!
//! Every key is documented in `config/README.md`. Errors name the file, the key and the problem,
//! e.g. `tailgate.toml: peer 2 (public_key): bad base64`.

use std::collections::HashSet;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use crate::nat::via6::SiteId;
use crate::prefs::{RoutingPrefs, ViaSite};
use crate::wg::Key;

/// Default WireGuard UDP port, as Tailscale uses.
pub const DEFAULT_LISTEN_PORT: u16 = 41641;
/// Default tunnel MTU, as Tailscale uses.
pub const DEFAULT_MTU: u16 = 1280;
/// Environment variable that overrides the configured MTU (Tailscale's name).
pub const MTU_ENV: &str = "TS_DEBUG_MTU";
/// Smallest MTU that can carry IPv6 (RFC 8200).
const MIN_MTU: u16 = 1280;
/// Largest tunnel MTU: 65535 minus the outer IPv6/UDP/WireGuard overhead.
const MAX_MTU: u16 = 65535 - 40 - 8 - 32;

/// A configuration error, always naming the file and (where known) the key.
#[derive(Debug)]
pub struct ConfigError {
    file: PathBuf,
    place: String,
    problem: String,
}

impl ConfigError {
    fn new(file: &Path, place: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            place: place.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.place.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.problem)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.place,
                self.problem
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// How the `wan_ingress` XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, generic (SKB) mode as fallback, none if BPF is unavailable; not
    /// on veth links, where native XDP costs more throughput than it saves.
    #[default]
    Auto,
    /// Native mode only.
    Native,
    /// Generic (SKB) mode only.
    Generic,
    /// Do not load any XDP program.
    Off,
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The local interface.
    pub interface: InterfaceConfig,
    /// Routing preferences (router and client side), changeable with `tailgate set`.
    pub routing: RoutingPrefs,
    /// Static peers, in file order.
    pub peers: Vec<PeerConfig>,
    /// The `[control]` table: peers, key and addresses come from a coordination server.
    pub control: Option<ControlConfig>,
    /// The `[dns]` table: the MagicDNS resolver.
    pub dns: DnsSettings,
}

/// The `[dns]` table, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Run the resolver at 100.100.100.100 and fd7a:115c:a1e0::53 (default on).
    pub enabled: bool,
    /// The tailnet domain in static mode (control mode takes the server's).
    pub domain: String,
    /// This node's name in static mode (default: the system's hostname).
    pub hostname: Option<String>,
    /// Split-DNS routes and global nameservers.
    pub resolvers: crate::dns::Resolvers,
    /// Point the system's resolver at MagicDNS (default on, as Tailscale's `--accept-dns`;
    /// the daemon's `--accept-dns` / `TS_ACCEPT_DNS` override it).
    pub accept_dns: bool,
    /// Send names outside the tailnet and the split routes to `nameservers` instead of the
    /// system's own resolvers (default off, as in Tailscale).
    pub override_local_dns: bool,
    /// The resolv.conf managed when systemd-resolved does not run.
    pub resolv_conf: PathBuf,
    /// Where the original resolv.conf is kept (default: `resolv.conf.pre-tailgate` in the
    /// state directory).
    pub resolv_conf_backup: Option<PathBuf>,
}

/// The system's resolv.conf.
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";

/// File name of the resolv.conf backup in the state directory.
pub const RESOLV_CONF_BACKUP: &str = "resolv.conf.pre-tailgate";

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            enabled: true,
            domain: DEFAULT_DNS_DOMAIN.into(),
            hostname: None,
            resolvers: crate::dns::Resolvers::default(),
            accept_dns: true,
            override_local_dns: false,
            resolv_conf: PathBuf::from(DEFAULT_RESOLV_CONF),
            resolv_conf_backup: None,
        }
    }
}

/// The tailnet domain of static mode unless `[dns] domain` says otherwise (the coordination
/// server's default too).
pub const DEFAULT_DNS_DOMAIN: &str = "tailnet.internal";

/// The `[control]` table, validated: the daemon runs in control mode (`tailgate up`).
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// The default login server for `tailgate up` (and to resume a registration at start-up).
    pub login_server: Option<crate::control::login_url::LoginServer>,
    /// Where the node's keys and registration live.
    pub state_dir: PathBuf,
    /// A LAN address a subnet router pings periodically; its result is reported as LAN health.
    pub health_probe: Option<std::net::IpAddr>,
    /// The hostname to register with when `tailgate up` gives none.
    pub hostname: Option<String>,
}

/// Default state directory of a node in control mode.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tailgate";

/// The `[interface]` table, validated.
#[derive(Debug, Clone)]
pub struct InterfaceConfig {
    /// TUN device name.
    pub name: String,
    /// Our static private key.
    pub private_key: Key,
    /// UDP port for WireGuard traffic (0 = pick a free one).
    pub listen_port: u16,
    /// Addresses assigned to the TUN device.
    pub addresses: Vec<IpNet>,
    /// Tunnel MTU.
    pub mtu: u16,
    /// XDP attach mode for `wan_ingress`.
    pub xdp: XdpMode,
    /// Interface to attach `wan_ingress` to; by default the one routing toward the peers.
    pub xdp_interface: Option<String>,
    /// The only LAN interface the XDP fast path forwards to; by default every interface the
    /// advertised routes go out of.
    pub lan_interface: Option<String>,
    /// Where to serve `/metrics` and `/healthz` (HTTP), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
}

/// One `[[peer]]` table, validated.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The peer's static public key.
    pub public_key: Key,
    /// Optional pre-shared key mixed into the handshake.
    pub preshared_key: Option<Key>,
    /// Where to send packets until the peer roams.
    pub endpoint: Option<SocketAddr>,
    /// Inner source addresses accepted from, and destinations routed to, this peer.
    pub allowed_ips: Vec<IpNet>,
    /// Keepalive interval in seconds, if any.
    pub persistent_keepalive: Option<u16>,
    /// A name for the peer (`--exit-node=<name>`, `tailgate exit-node list`).
    pub name: Option<String>,
    /// Subnet routes the peer advertises; installed when `accept_routes` is on.
    pub routes: Vec<IpNet>,
    /// Whether the peer offers exit-node service.
    pub exit_node: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interface: RawInterface,
    #[serde(default)]
    via: Vec<RawVia>,
    #[serde(default)]
    peer: Vec<RawPeer>,
    control: Option<RawControl>,
    dns: Option<RawDns>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    enabled: Option<bool>,
    domain: Option<String>,
    hostname: Option<String>,
    #[serde(default)]
    nameservers: Vec<String>,
    #[serde(default)]
    routes: std::collections::BTreeMap<String, Vec<String>>,
    accept_dns: Option<bool>,
    override_local_dns: Option<bool>,
    resolv_conf: Option<PathBuf>,
    resolv_conf_backup: Option<PathBuf>,
}

fn validate_dns(path: &Path, raw: Option<RawDns>) -> Result<DnsSettings, ConfigError> {
    let Some(raw) = raw else {
        return Ok(DnsSettings::default());
    };
    let err = |key: &str, problem: String| ConfigError::new(path, format!("dns.{key}"), problem);
    let upstreams =
        |key: &str, list: &[String]| -> Result<Vec<crate::dns::Upstream>, ConfigError> {
            list.iter()
                .map(|u| u.parse().map_err(|e| err(key, format!("{e}"))))
                .collect()
        };
    let global = upstreams("nameservers", &raw.nameservers)?;
    let mut split = Vec::new();
    for (suffix, servers) in &raw.routes {
        let clean = suffix.trim_end_matches('.');
        if clean.is_empty() || clean.split('.').any(|l| l.is_empty() || l.len() > 63) {
            return Err(err("routes", format!("{suffix:?} is not a domain name")));
        }
        split.push(crate::dns::SplitRoute {
            suffix: clean.to_ascii_lowercase(),
            upstreams: upstreams(&format!("routes.{suffix}"), servers)?,
        });
    }
    let domain = raw
        .domain
        .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_else(|| DEFAULT_DNS_DOMAIN.into());
    if domain.is_empty() || domain.split('.').any(|l| l.is_empty() || l.len() > 63) {
        return Err(err("domain", format!("{domain:?} is not a domain name")));
    }
    for (key, p) in [
        ("resolv_conf", &raw.resolv_conf),
        ("resolv_conf_backup", &raw.resolv_conf_backup),
    ] {
        if p.as_ref().is_some_and(|p| !p.is_absolute()) {
            return Err(err(key, "must be an absolute path".into()));
        }
    }
    let defaults = DnsSettings::default();
    Ok(DnsSettings {
        enabled: raw.enabled.unwrap_or(true),
        domain,
        hostname: raw.hostname,
        resolvers: crate::dns::Resolvers { split, global },
        accept_dns: raw.accept_dns.unwrap_or(defaults.accept_dns),
        override_local_dns: raw
            .override_local_dns
            .unwrap_or(defaults.override_local_dns),
        resolv_conf: raw.resolv_conf.unwrap_or(defaults.resolv_conf),
        resolv_conf_backup: raw.resolv_conf_backup,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    login_server: Option<String>,
    state_dir: Option<PathBuf>,
    health_probe: Option<String>,
    hostname: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVia {
    site: u32,
    routes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: String,
    private_key: Option<String>,
    private_key_file: Option<PathBuf>,
    listen_port: Option<u16>,
    #[serde(default)]
    address: Vec<String>,
    mtu: Option<u16>,
    #[serde(default)]
    xdp: XdpMode,
    xdp_interface: Option<String>,
    lan_interface: Option<String>,
    metrics_listen: Option<String>,
    #[serde(default)]
    advertise_routes: Vec<String>,
    snat_subnet_routes: Option<bool>,
    #[serde(default)]
    advertise_exit_node: bool,
    #[serde(default)]
    accept_routes: bool,
    exit_node: Option<String>,
    #[serde(default)]
    exit_node_allow_lan_access: bool,
    #[serde(default)]
    advertise_peer_relay: bool,
    peer_relay_port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    public_key: String,
    preshared_key: Option<String>,
    endpoint: Option<String>,
    #[serde(default)]
    allowed_ips: Vec<String>,
    persistent_keepalive: Option<u16>,
    name: Option<String>,
    #[serde(default)]
    routes: Vec<String>,
    #[serde(default)]
    exit_node: bool,
}

impl Config {
    /// Reads and validates a configuration file. `TS_DEBUG_MTU` overrides `mtu`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, "", format!("cannot read: {e}")))?;
        let mtu_override = std::env::var(MTU_ENV).ok();
        Self::parse(path, &text, mtu_override.as_deref())
    }

    /// Parses configuration text; `path` is used only in error messages and to resolve
    /// a relative `private_key_file`.
    pub fn parse(
        path: &Path,
        text: &str,
        mtu_override: Option<&str>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::new(path, "", toml_error(&e)))?;
        let routing = validate_routing(path, &raw.interface, &raw.via)?;
        let dns = validate_dns(path, raw.dns)?;
        let control = raw.control.map(|c| validate_control(path, c)).transpose()?;
        if let Some(c) = &control {
            let err = |key: &str, problem: &str| ConfigError::new(path, key.to_string(), problem);
            if raw.interface.private_key.is_some() || raw.interface.private_key_file.is_some() {
                return Err(err(
                    "interface.private_key",
                    "not allowed with [control]: the key lives in control.state_dir",
                ));
            }
            if !raw.interface.address.is_empty() {
                return Err(err(
                    "interface.address",
                    "not allowed with [control]: addresses come from the coordination server",
                ));
            }
            if !raw.peer.is_empty() {
                return Err(err(
                    "peer",
                    "static peers are not allowed with [control]: peers come from the coordination server",
                ));
            }
            let state = crate::control::node_state::NodeState::load_or_create(&c.state_dir)
                .map_err(|e| err("control.state_dir", &format!("{e:#}")))?;
            let mut raw_if = raw.interface;
            raw_if.private_key = Some(state.node_key.to_base64());
            let interface = validate_interface(path, raw_if, mtu_override)?;
            return Ok(Config {
                interface,
                routing,
                peers: Vec::new(),
                control,
                dns,
            });
        }
        let interface = validate_interface(path, raw.interface, mtu_override)?;
        let mut peers = Vec::with_capacity(raw.peer.len());
        let mut seen = HashSet::new();
        for (i, p) in raw.peer.into_iter().enumerate() {
            let peer = validate_peer(path, i + 1, p)?;
            if !seen.insert(peer.public_key) {
                return Err(ConfigError::new(
                    path,
                    format!("peer {} (public_key)", i + 1),
                    "duplicate peer: this public key is already configured",
                ));
            }
            if peer.public_key == interface.private_key.public_key() {
                return Err(ConfigError::new(
                    path,
                    format!("peer {} (public_key)", i + 1),
                    "this is the interface's own public key",
                ));
            }
            peers.push(peer);
        }
        let mut names = HashSet::new();
        for (i, p) in peers.iter().enumerate() {
            if let Some(n) = &p.name {
                if !names.insert(n.clone()) {
                    return Err(ConfigError::new(
                        path,
                        format!("peer {} (name)", i + 1),
                        format!("duplicate name {n:?}"),
                    ));
                }
            }
        }
        Ok(Config {
            interface,
            routing,
            peers,
            control: None,
            dns,
        })
    }
}

fn toml_error(e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => format!("{} (at byte {})", e.message(), span.start),
        None => e.message().to_string(),
    }
}

fn validate_control(path: &Path, raw: RawControl) -> Result<ControlConfig, ConfigError> {
    let err =
        |key: &str, problem: String| ConfigError::new(path, format!("control.{key}"), problem);
    let login_server = raw
        .login_server
        .map(|u| u.parse().map_err(|e| err("login_server", format!("{e}"))))
        .transpose()?;
    let health_probe = raw
        .health_probe
        .map(|a| {
            a.trim()
                .parse()
                .map_err(|_| err("health_probe", format!("{a:?} is not an IP address")))
        })
        .transpose()?;
    let state_dir = raw
        .state_dir
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let state_dir = match path.parent() {
        Some(d) if state_dir.is_relative() => d.join(state_dir),
        _ => state_dir,
    };
    Ok(ControlConfig {
        login_server,
        state_dir,
        health_probe,
        hostname: raw.hostname,
    })
}

fn validate_interface(
    path: &Path,
    raw: RawInterface,
    mtu_override: Option<&str>,
) -> Result<InterfaceConfig, ConfigError> {
    let err =
        |key: &str, problem: String| ConfigError::new(path, format!("interface.{key}"), problem);
    validate_ifname(&raw.name).map_err(|p| err("name", p))?;
    let private_key = match (raw.private_key, raw.private_key_file) {
        (Some(_), Some(_)) => {
            return Err(err(
                "private_key",
                "set either private_key or private_key_file, not both".into(),
            ))
        }
        (None, None) => return Err(err(
            "private_key",
            "missing: set private_key or private_key_file (generate one with `tailgate genkey`)"
                .into(),
        )),
        (Some(k), None) => Key::from_base64(&k).map_err(|e| err("private_key", e.to_string()))?,
        (None, Some(file)) => {
            let file = path.parent().map(|d| d.join(&file)).unwrap_or(file);
            read_private_key_file(&file).map_err(|p| err("private_key_file", p))?
        }
    };
    let addresses = raw
        .address
        .iter()
        .map(|a| parse_cidr(a).map_err(|p| err("address", p)))
        .collect::<Result<Vec<_>, _>>()?;
    let mtu = match mtu_override {
        Some(v) => v
            .trim()
            .parse::<u16>()
            .map_err(|_| err("mtu", format!("{MTU_ENV}={v:?} is not a number")))?,
        None => raw.mtu.unwrap_or(DEFAULT_MTU),
    };
    if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
        return Err(err(
            "mtu",
            format!("{mtu} is out of range {MIN_MTU}..={MAX_MTU}"),
        ));
    }
    for (key, name) in [
        ("xdp_interface", &raw.xdp_interface),
        ("lan_interface", &raw.lan_interface),
    ] {
        if let Some(x) = name {
            validate_ifname(x).map_err(|p| err(key, p))?;
        }
    }
    let metrics_listen = raw
        .metrics_listen
        .as_deref()
        .map(|a| {
            a.parse::<SocketAddr>().map_err(|_| {
                err(
                    "metrics_listen",
                    format!(
                        "{a:?} is not an address:port (e.g. \"127.0.0.1:9002\" or \"[::]:9002\")"
                    ),
                )
            })
        })
        .transpose()?;
    Ok(InterfaceConfig {
        name: raw.name,
        private_key,
        listen_port: raw.listen_port.unwrap_or(DEFAULT_LISTEN_PORT),
        addresses,
        mtu,
        xdp: raw.xdp,
        xdp_interface: raw.xdp_interface,
        lan_interface: raw.lan_interface,
        metrics_listen,
    })
}

fn validate_peer(path: &Path, n: usize, raw: RawPeer) -> Result<PeerConfig, ConfigError> {
    let err =
        |key: &str, problem: String| ConfigError::new(path, format!("peer {n} ({key})"), problem);
    let public_key =
        Key::from_base64(&raw.public_key).map_err(|e| err("public_key", e.to_string()))?;
    let preshared_key = raw
        .preshared_key
        .map(|k| Key::from_base64(&k).map_err(|e| err("preshared_key", e.to_string())))
        .transpose()?;
    let endpoint = raw
        .endpoint
        .map(|e| parse_endpoint(&e).map_err(|p| err("endpoint", p)))
        .transpose()?;
    let allowed_ips = raw
        .allowed_ips
        .iter()
        .map(|a| parse_cidr(a).map_err(|p| err("allowed_ips", p)))
        .collect::<Result<Vec<_>, _>>()?;
    let routes = raw
        .routes
        .iter()
        .map(|a| {
            parse_cidr(a)
                .map(|n| n.trunc())
                .map_err(|p| err("routes", p))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(n) = &raw.name {
        if n.is_empty() || n.chars().any(|c| c.is_whitespace()) {
            return Err(err(
                "name",
                format!("{n:?} must be non-empty without spaces"),
            ));
        }
    }
    Ok(PeerConfig {
        public_key,
        preshared_key,
        endpoint,
        allowed_ips,
        persistent_keepalive: raw.persistent_keepalive.filter(|&k| k != 0),
        name: raw.name,
        routes,
        exit_node: raw.exit_node,
    })
}

fn validate_routing(
    path: &Path,
    raw: &RawInterface,
    via: &[RawVia],
) -> Result<RoutingPrefs, ConfigError> {
    let err = |key: &str, problem: String| ConfigError::new(path, key.to_string(), problem);
    let advertise_routes = raw
        .advertise_routes
        .iter()
        .map(|a| parse_cidr(a).map_err(|p| err("interface.advertise_routes", p)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut sites = Vec::new();
    for (i, v) in via.iter().enumerate() {
        let place = format!("via {} (site {})", i + 1, v.site);
        let site = SiteId::from_u32(v.site).map_err(|e| err(&place, e.to_string()))?;
        let routes = v
            .routes
            .iter()
            .map(|r| match parse_cidr(r) {
                Ok(IpNet::V4(n)) => Ok(n.trunc()),
                Ok(other) => Err(err(&place, format!("{other} is not an IPv4 prefix"))),
                Err(p) => Err(err(&place, p)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        sites.push(ViaSite {
            site: site.get(),
            routes,
        });
    }
    let mut prefs = RoutingPrefs {
        advertise_routes,
        via: sites,
        snat_subnet_routes: raw.snat_subnet_routes.unwrap_or(true),
        advertise_exit_node: raw.advertise_exit_node,
        accept_routes: raw.accept_routes,
        exit_node: raw.exit_node.clone(),
        exit_node_allow_lan_access: raw.exit_node_allow_lan_access,
        peer_relay_port: raw.advertise_peer_relay.then(|| {
            raw.peer_relay_port
                .unwrap_or(crate::peer_relay::DEFAULT_PORT)
        }),
    };
    prefs.normalize().map_err(|p| err("interface", p))?;
    Ok(prefs)
}

/// Checks a Linux interface name: 1–15 bytes, no `/`, whitespace or `:`.
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!("{name:?} must be 1 to 15 characters"));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    Ok(())
}

/// Parses `addr/prefix` (or a bare address, meaning a host route) into a network.
/// Host bits must be zero unless the prefix is a host address (used for interface addresses).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "{s:?} is not a valid CIDR (expected e.g. 10.0.0.0/24 or fd00::/64)"
    ))
}

/// Parses `host:port` (IPv6 as `[addr]:port`), resolving a host name once.
pub fn parse_endpoint(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!(
            "{s:?} has no port (expected host:port, IPv6 as [addr]:port)"
        ));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("{s:?}: port {port:?} is not a number 0-65535"));
    }
    if host.contains(':') && !host.starts_with('[') {
        return Err(format!("{s:?}: write IPv6 endpoints as [addr]:port"));
    }
    s.to_socket_addrs()
        .map_err(|e| format!("{s:?}: cannot resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?}: host name has no address"))
}

/// Reads a base64 private key from a file that must not be readable by other users.
pub fn read_private_key_file(file: &Path) -> Result<Key, String> {
    let meta = std::fs::metadata(file).map_err(|e| format!("{}: {e}", file.display()))?;
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(format!(
            "{} is world-readable; run `chmod 600 {}`",
            file.display(),
            file.display()
        ));
    }
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    Key::from_base64(text.trim()).map_err(|e| format!("{}: {e}", file.display()))
}

#[cfg(test)]
mod dns_tests {
    use super::*;

    const BASE: &str = "[interface]\nname = \"tg0\"\nprivate_key = \"yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\"\n";

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("t.toml"), &format!("{BASE}{extra}"), None)
    }

    #[test]
    fn dns_table_defaults_and_values() {
        let c = parse("").unwrap();
        assert!(c.dns.enabled);
        assert_eq!(c.dns.domain, "tailnet.internal");
        let c = parse(
            "[dns]\ndomain = \"Corp.Example.\"\nhostname = \"gw1\"\nnameservers = [\"9.9.9.9\", \"https://dns.example/dns-query#192.0.2.1\"]\n[dns.routes]\n\"internal.company.com\" = [\"10.0.0.53\"]\n",
        )
        .unwrap();
        assert_eq!(c.dns.domain, "corp.example");
        assert_eq!(c.dns.hostname.as_deref(), Some("gw1"));
        assert_eq!(c.dns.resolvers.global.len(), 2);
        assert_eq!(c.dns.resolvers.split[0].suffix, "internal.company.com");
        assert!(c.dns.accept_dns && !c.dns.override_local_dns);
        assert_eq!(c.dns.resolv_conf, PathBuf::from("/etc/resolv.conf"));
        let off = parse("[dns]\nenabled = false\n").unwrap();
        assert!(!off.dns.enabled);
        let os = parse(
            "[dns]\naccept_dns = false\noverride_local_dns = true\nresolv_conf = \"/tmp/r\"\nresolv_conf_backup = \"/tmp/b\"\n",
        )
        .unwrap();
        assert!(!os.dns.accept_dns && os.dns.override_local_dns);
        assert_eq!(os.dns.resolv_conf_backup, Some(PathBuf::from("/tmp/b")));
    }

    #[test]
    fn bad_dns_values_name_the_key() {
        for (extra, key) in [
            (
                "[dns]\nnameservers = [\"not an address\"]\n",
                "dns.nameservers",
            ),
            ("[dns]\ndomain = \"a..b\"\n", "dns.domain"),
            ("[dns.routes]\n\"..\" = [\"10.0.0.53\"]\n", "dns.routes"),
            ("[dns]\nbogus = 1\n", "bogus"),
            (
                "[dns]\nresolv_conf = \"etc/resolv.conf\"\n",
                "dns.resolv_conf",
            ),
        ] {
            let e = parse(extra).unwrap_err().to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "YEocP0uB4VQvKpz0Bg+R3jcGZ8SbKYCiPHvMbGwnQGk=";
    const KEY_B: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("t.toml"), text, None).map_err(|e| e.to_string())
    }

    fn iface() -> String {
        format!("[interface]\nname = \"tg0\"\nprivate_key = \"{KEY_A}\"\n")
    }

    #[test]
    fn full_example_parses_with_defaults() {
        let c = parse(&format!(
            "{}address = [\"100.64.0.1/32\", \"fd7a:115c:a1e0::1/128\"]\n\
             [[peer]]\npublic_key = \"{KEY_B}\"\nendpoint = \"[::1]:51820\"\n\
             allowed_ips = [\"100.64.0.2/32\", \"192.168.50.0/24\"]\npersistent_keepalive = 25\n",
            iface()
        ))
        .unwrap();
        assert_eq!(c.interface.listen_port, DEFAULT_LISTEN_PORT);
        assert_eq!(c.interface.mtu, DEFAULT_MTU);
        assert_eq!(c.interface.addresses.len(), 2);
        assert_eq!(c.peers[0].endpoint, Some("[::1]:51820".parse().unwrap()));
        assert_eq!(c.peers[0].persistent_keepalive, Some(25));
    }

    #[test]
    fn errors_name_key_and_problem() {
        let e = parse(&format!("{}[[peer]]\npublic_key = \"abc\"\n", iface())).unwrap_err();
        assert!(e.starts_with("t.toml: peer 1 (public_key): "), "{e}");
        let e = parse(&format!(
            "{}[[peer]]\npublic_key = \"{KEY_B}\"\nallowed_ips = [\"10.0.0.0/33\"]\n",
            iface()
        ))
        .unwrap_err();
        assert!(
            e.contains("peer 1 (allowed_ips)") && e.contains("10.0.0.0/33"),
            "{e}"
        );
        let e = parse(&format!("{}bogus = 1\n", iface())).unwrap_err();
        assert!(e.contains("unknown field `bogus`"), "{e}");
        let e = parse(&format!(
            "{0}[[peer]]\npublic_key = \"{KEY_B}\"\n[[peer]]\npublic_key = \"{KEY_B}\"\n",
            iface()
        ))
        .unwrap_err();
        assert!(e.contains("peer 2 (public_key): duplicate peer"), "{e}");
        let e = parse(&format!(
            "{}[[peer]]\npublic_key = \"{KEY_B}\"\nendpoint = \"::1:5\"\n",
            iface()
        ))
        .unwrap_err();
        assert!(e.contains("[addr]:port"), "{e}");
        let e = parse("[interface]\nname = \"tg0\"\n").unwrap_err();
        assert!(e.contains("interface.private_key: missing"), "{e}");
    }

    /// Every example in config/ parses (with an inline key instead of the key file).
    #[test]
    fn shipped_examples_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let text: String = text
                .lines()
                .map(|l| {
                    if l.starts_with("private_key_file") {
                        format!("private_key = \"{KEY_A}\"")
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            Config::parse(&path, &text, None).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
        assert!(seen >= 4, "examples found: {seen}");
    }

    #[test]
    fn mtu_override_and_bounds() {
        let path = Path::new("t.toml");
        let c = Config::parse(path, &iface(), Some("1420")).unwrap();
        assert_eq!(c.interface.mtu, 1420);
        let e = Config::parse(path, &iface(), Some("99"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("interface.mtu: 99 is out of range"), "{e}");
        let e = Config::parse(path, &iface(), Some("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("TS_DEBUG_MTU"), "{e}");
    }

    #[test]
    fn private_key_file_must_not_be_world_readable() {
        let dir = std::env::temp_dir().join(format!("tg-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        std::fs::write(&key, format!("{KEY_A}\n")).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = "[interface]\nname = \"tg0\"\nprivate_key_file = \"key\"\n";
        let e = Config::parse(&dir.join("c.toml"), text, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("world-readable"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::parse(&dir.join("c.toml"), text, None).unwrap();
        assert_eq!(c.interface.private_key.to_base64(), KEY_A);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
