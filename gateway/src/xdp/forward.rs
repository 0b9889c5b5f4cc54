//! Loader for the subnet-forwarding XDP programs `tun_forward` (on the daemon's TUN device,
//! generic mode) and `lan_return` (on each LAN interface, native mode with generic as
//! fallback). Semantics: `gateway_common::forward` and the program sources in
//! `gateway-ebpf/src/{tun_forward,lan_return,fwd}.rs`; the reference is `crate::nat`.
//!
//! What the daemon does with it:
//!
//! ```text
//! let mut fwd = XdpForward::attach("tailgate0", &ForwardOptions {
//!     lan: vec![LanInterface::new("eth1", "192.168.1.1".parse()?)],
//!     snat_subnet_routes: prefs.snat_subnet_routes,
//!     ..ForwardOptions::default()
//! })?;
//! fwd.set_routes(&advertised)?;            // IPv4 subnets and 4via6 prefixes, any time
//! every few seconds: fwd.expire()?;        // frees idle connection entries
//! status: fwd.counters()?, fwd.connection_count()?
//! drop(fwd);                               // detaches both programs
//! ```
//!
//! Requirements on the rest of the system (the kernel path handles everything XDP passes):
//! IPv4 forwarding on (and IPv6 forwarding for 4via6 replies), routes for the tailnet ranges
//! into the TUN, the TUN holding its tailnet IPv4 address, and the nftables fallback in place
//! with its masquerade limited to tailnet sources (`ip saddr 100.64.0.0/10`: packets XDP has
//! already SNATed and hands to the kernel must not be NATed again) and to ports outside
//! [`ForwardOptions::port_range`] (`masquerade to :1024-60999`: the two allocators do not see
//! each other's connections). The loader itself sets `accept_local` (and loose `rp_filter`
//! when strict) on the TUN while attached: those SNATed packets carry the router's own
//! address as source. The daemon must not write GSO super-packets for 4via6 destinations
//! (XDP cannot translate them; it passes them untouched).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray, XskMap};
use aya::programs::Xdp;
use aya::{Ebpf, EbpfLoader};
use gateway_common::forward::{
    ct_last_seen, AdvV4, AdvVia, CtOrigKey, CtOrigVal, CtReplyKey, CtReplyVal, CtState, FwdConfig,
    FwdEgress, CT_FAMILY_V6, CT_FLAG_VIA6, CT_TIMEOUT_CLASSES, EGRESS_FLAG_XSK,
    FWD_ADV_MAX_DEFAULT, FWD_ADV_V4_MAP, FWD_ADV_VIA_MAP, FWD_CONFIG_MAP, FWD_CT_MAX_DEFAULT,
    FWD_CT_ORIG_MAP, FWD_CT_REPLY_MAP, FWD_EGRESS_MAP, FWD_EGRESS_MAX, FWD_FLAG_ENABLED,
    FWD_FLAG_SNAT, LAN_COUNTERS_MAP, LAN_RETURN_PROGRAM, LAN_XSK_MAP, LAN_XSK_MAX, PROTO_ICMP,
    PROTO_TCP, PROTO_UDP, TUN_COUNTERS_MAP, TUN_FORWARD_PROGRAM,
};
use ipnet::IpNet;
use serde::Serialize;

use super::loader::{attach_xdp, load_program, program_fd, program_mut, take_map};
use super::{
    check_capabilities, ebpf_object, prog_test_run_xdp, raise_memlock_rlimit_if_needed,
    AttachPreference, ForwardCounters, LanReturnCounters, TestRun, TunForwardCounters, XdpError,
};
use crate::afxdp::XdpSocket;
use crate::nat::conntrack::Timeouts;
use crate::nat::via6;

/// A LAN interface `tun_forward` may forward to and `lan_return` runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LanInterface {
    /// Interface name (in the network namespace of the thread that attaches).
    pub ifname: String,
    /// The router's IPv4 address on it: the SNAT source, and the address replies come back to.
    pub snat_v4: Ipv4Addr,
}

impl LanInterface {
    pub fn new(ifname: impl Into<String>, snat_v4: Ipv4Addr) -> Self {
        LanInterface {
            ifname: ifname.into(),
            snat_v4,
        }
    }
}

/// An advertised route the fast path serves: an IPv4 subnet, or a 4via6 prefix (`/96` or
/// longer inside `fd7a:115c:a1e0:b1a::/64`, site ≤ 65535, no forbidden targets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ForwardRoute {
    pub prefix: IpNet,
    /// Routing table the next hop is looked up in (0: the normal lookup). Lets one router
    /// serve 4via6 sites with overlapping IPv4 ranges from separate tables (kernel 6.8+).
    pub table: u32,
}

impl From<IpNet> for ForwardRoute {
    fn from(prefix: IpNet) -> Self {
        ForwardRoute { prefix, table: 0 }
    }
}

/// Settings of the forwarding fast path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardOptions {
    /// LAN interfaces (egress for `tun_forward`, where `lan_return` is attached).
    pub lan: Vec<LanInterface>,
    /// `--snat-subnet-routes` (default on); 4via6 is always SNATed.
    pub snat_subnet_routes: bool,
    /// SNAT ports / ICMP echo IDs (default 61000–65535, clear of Linux's ephemeral ports).
    pub port_range: RangeInclusive<u16>,
    /// Idle timeouts of connection entries (same defaults as `nat::conntrack`).
    pub timeouts: Timeouts,
    /// MTU of the tunnel for `lan_return`'s size check; `None`: read from the TUN device when
    /// it is attached (1280 until then); `Some(0)`: no check.
    pub tun_mtu: Option<u32>,
    /// Seed of the port choice hash; `None`: random.
    pub seed: Option<u32>,
    /// Size of each connection map (LRU: the least recently used entry is evicted beyond it).
    pub max_connections: u32,
    /// Size of each advertised-route trie.
    pub max_routes: u32,
    /// How `lan_return` is attached (`tun_forward` is always generic: a TUN has no native XDP
    /// for packets written into it).
    pub lan_attach: AttachPreference,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        ForwardOptions {
            lan: Vec::new(),
            snat_subnet_routes: true,
            port_range: 61_000..=65_535,
            timeouts: Timeouts::default(),
            tun_mtu: None,
            seed: None,
            max_connections: FWD_CT_MAX_DEFAULT,
            max_routes: FWD_ADV_MAX_DEFAULT,
            lan_attach: AttachPreference::Auto,
        }
    }
}

/// Errors of the forwarding loader.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Xdp(#[from] XdpError),
    #[error("invalid XDP forwarding setting: {0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> ForwardError {
    move |source| ForwardError::Xdp(XdpError::Map { name, source })
}

/// Which program [`XdpForward::test_run`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardProgram {
    TunForward,
    LanReturn,
}

impl ForwardProgram {
    pub fn name(self) -> &'static str {
        match self {
            ForwardProgram::TunForward => TUN_FORWARD_PROGRAM,
            ForwardProgram::LanReturn => LAN_RETURN_PROGRAM,
        }
    }
}

/// XDP actions.
pub mod action {
    pub const ABORTED: u32 = 0;
    pub const DROP: u32 = 1;
    pub const PASS: u32 = 2;
    pub const TX: u32 = 3;
    pub const REDIRECT: u32 = 4;
}

/// One tracked connection (for status and debugging).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForwardConn {
    /// "tcp", "udp" or "icmp".
    pub proto: &'static str,
    /// As the tailnet side sends it.
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// The translated flow's source (SNAT address and port / echo ID) and destination.
    pub snat: Ipv4Addr,
    pub snat_port: u16,
    pub lan_dst: Ipv4Addr,
    pub via6: bool,
    /// Lifecycle state (as `nat::conntrack::ConnState`, snake_case).
    pub state: &'static str,
    /// Time since the last packet.
    pub idle: Duration,
    /// Whether the entry has idled out (it is ignored and will be removed by `expire`).
    pub expired: bool,
}

/// What [`XdpForward::expire`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExpireStats {
    /// Connections that had idled out.
    pub expired: usize,
    /// Reply entries without a live connection (LRU evictions, replaced connections).
    pub orphans: usize,
    /// Connections left.
    pub remaining: usize,
}

struct Maps {
    config: Array<MapData, FwdConfig>,
    egress: HashMap<MapData, [u8; 4], FwdEgress>,
    adv_v4: LpmTrie<MapData, [u8; 4], AdvV4>,
    adv_via: LpmTrie<MapData, [u8; 16], AdvVia>,
    ct_orig: HashMap<MapData, CtOrigKey, CtOrigVal>,
    ct_reply: HashMap<MapData, CtReplyKey, CtReplyVal>,
    tun_counters: PerCpuArray<MapData, u64>,
    lan_counters: PerCpuArray<MapData, u64>,
    /// `LAN_XSKS` (an XSK map; aya's wrapper borrows it for updates).
    xsks: aya::maps::Map,
}

/// An attached program: interface and mode.
#[derive(Clone, Debug)]
struct Attachment {
    ifname: String,
    mode: &'static str,
}

/// A sysctl file changed by the loader, with the value to restore.
#[derive(Debug)]
struct SysctlChange {
    path: String,
    old: String,
}

/// Per-interface IPv4 sysctls of the TUN that the kernel path needs for packets `tun_forward`
/// has already NATed and passes on (their source is the router's own LAN address):
/// `accept_local=1` (else they are dropped as martians), and loose `rp_filter` when the
/// effective mode is strict (the reverse path of a local address is not the TUN). Returns
/// what to restore.
fn prepare_tun_sysctls(ifname: &str) -> Result<Vec<SysctlChange>, ForwardError> {
    let base = "/proc/sys/net/ipv4/conf";
    let read = |name: &str, key: &str| -> Result<String, ForwardError> {
        let path = format!("{base}/{name}/{key}");
        std::fs::read_to_string(&path)
            .map(|v| v.trim().to_string())
            .map_err(|source| ForwardError::Io {
                what: format!("reading {path}"),
                source,
            })
    };
    let mut changes = Vec::new();
    let mut set = |key: &str, value: &str| -> Result<(), ForwardError> {
        let path = format!("{base}/{ifname}/{key}");
        let old = read(ifname, key)?;
        if old == value {
            return Ok(());
        }
        std::fs::write(&path, value).map_err(|source| ForwardError::Io {
            what: format!("writing {path}"),
            source,
        })?;
        log::info!("XDP forwarding: set {path} = {value} (was {old})");
        changes.push(SysctlChange { path, old });
        Ok(())
    };
    set("accept_local", "1")?;
    // The effective mode is the maximum of "all" and the interface's (1 strict, 2 loose).
    let all: u32 = read("all", "rp_filter")?.parse().unwrap_or(0);
    let dev: u32 = read(ifname, "rp_filter")?.parse().unwrap_or(0);
    if all.max(dev) == 1 {
        set("rp_filter", "2")?;
    }
    if all.max(dev) != 0 && !has_ipv4_address(ifname) {
        log::warn!(
            "XDP forwarding: {ifname} has no IPv4 address and rp_filter is on: the kernel will \
             drop the packets tun_forward NATs and hands to it (first packets to a new LAN \
             neighbour, GSO); give the TUN its tailnet address or turn rp_filter off"
        );
    }
    Ok(changes)
}

/// Whether `ifname` has an IPv4 address (in the calling thread's network namespace).
fn has_ipv4_address(ifname: &str) -> bool {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `getifaddrs` allocates a list and stores its head in `list`.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return true; // unknown: do not warn
    }
    let mut found = false;
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list returned by `getifaddrs`, valid until
        // `freeifaddrs`; `ifa_name` is a NUL-terminated string and `ifa_addr` may be null.
        let (name, family) = unsafe {
            let ifa = &*cur;
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name);
            let family = if ifa.ifa_addr.is_null() {
                -1
            } else {
                i32::from((*ifa.ifa_addr).sa_family)
            };
            cur = ifa.ifa_next;
            (name, family)
        };
        if family == libc::AF_INET && name.to_bytes() == ifname.as_bytes() {
            found = true;
            break;
        }
    }
    // SAFETY: `list` came from a successful `getifaddrs` and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

fn restore_sysctls(changes: &mut Vec<SysctlChange>) {
    for c in changes.drain(..).rev() {
        if let Err(e) = std::fs::write(&c.path, &c.old) {
            // The interface may be gone already (the daemon removed the TUN first).
            log::debug!("restoring {} = {}: {e}", c.path, c.old);
        }
    }
}

/// The forwarding programs, loaded (and attached with [`XdpForward::attach`]). Dropping it
/// detaches and unloads both programs and frees the maps.
pub struct XdpForward {
    maps: Maps,
    /// Owns the programs and their XDP links (dropped after the maps).
    ebpf: Ebpf,
    opts: ForwardOptions,
    config: FwdConfig,
    /// LAN interfaces by ifindex.
    lan: BTreeMap<u32, LanInterface>,
    routes: BTreeMap<IpNet, u32>,
    tun: Option<Attachment>,
    lans: Vec<Attachment>,
    /// Sysctls changed for the TUN (restored on drop).
    sysctls: Vec<SysctlChange>,
    /// The LAN interface (ifindex) whose returned packets go to AF_XDP sockets, and the
    /// receive queues that have one.
    xsk_lan: Option<u32>,
    xsk_queues: BTreeSet<u32>,
}

impl std::fmt::Debug for XdpForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpForward")
            .field("tun", &self.tun)
            .field("lans", &self.lans)
            .field("routes", &self.routes.len())
            .field("snat", &self.opts.snat_subnet_routes)
            .finish_non_exhaustive()
    }
}

fn ifindex(ifname: &str) -> Result<u32, ForwardError> {
    let c = std::ffi::CString::new(ifname)
        .map_err(|_| ForwardError::Config(format!("bad interface name {ifname:?}")))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(XdpError::UnknownInterface(ifname.to_string()).into())
    } else {
        Ok(idx)
    }
}

/// MTU of `ifname` (in the calling thread's network namespace).
fn interface_mtu(ifname: &str) -> Result<u32, ForwardError> {
    let io = |source| ForwardError::Io {
        what: format!("reading the MTU of {ifname}"),
        source,
    };
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).map_err(io)?;
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = ifname.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return Err(XdpError::UnknownInterface(ifname.to_string()).into());
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU reads the name from and writes the MTU into `req`, which outlives the
    // call; the socket fd is valid.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) };
    if rc != 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    // SAFETY: after a successful SIOCGIFMTU the union holds the MTU.
    Ok(unsafe { req.ifr_ifru.ifru_mtu } as u32)
}

fn take_xsk_map(ebpf: &mut Ebpf) -> Result<aya::maps::Map, ForwardError> {
    let map = ebpf.take_map(LAN_XSK_MAP).ok_or(XdpError::MissingObject {
        kind: "map",
        name: LAN_XSK_MAP,
    })?;
    XskMap::try_from(&map).map_err(map_err(LAN_XSK_MAP))?;
    Ok(map)
}

/// `BPF_MAP_DELETE_ELEM` of a `u32` key (aya 0.13's `XskMap` cannot remove entries); a
/// missing key is not an error.
fn map_delete_u32(map: BorrowedFd<'_>, key: u32) -> std::io::Result<()> {
    #[repr(C)]
    struct DeleteAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
    let attr = DeleteAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: &key as *const u32 as u64,
        value: 0,
        flags: 0,
    };
    // SAFETY: `attr` is a valid, zero-padded `bpf_attr` prefix for this command whose key
    // pointer refers to `key`, alive for the call; the size passed is the struct's.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_DELETE_ELEM,
            &attr as *const DeleteAttr,
            std::mem::size_of::<DeleteAttr>(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOENT) {
        return Ok(());
    }
    Err(e)
}

/// The config entry for `opts` (`tun_mtu` resolved).
fn config_value(opts: &ForwardOptions, tun_mtu: u32, seed: u32) -> FwdConfig {
    let mut flags = FWD_FLAG_ENABLED;
    if opts.snat_subnet_routes {
        flags |= FWD_FLAG_SNAT;
    }
    let t = &opts.timeouts;
    let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX).max(1);
    let classes: [u32; CT_TIMEOUT_CLASSES] = [
        secs(t.tcp_transitory),
        secs(t.tcp_established),
        secs(t.tcp_closed),
        secs(t.udp_unreplied),
        secs(t.udp),
        secs(t.icmp),
    ];
    FwdConfig {
        flags: flags.to_be_bytes(),
        port_min: opts.port_range.start().to_be_bytes(),
        port_max: opts.port_range.end().to_be_bytes(),
        seed: seed.to_be_bytes(),
        tun_mtu: tun_mtu.to_be_bytes(),
        timeouts: classes.map(u32::to_be_bytes),
    }
}

fn validate(opts: &ForwardOptions) -> Result<(), ForwardError> {
    let (lo, hi) = (*opts.port_range.start(), *opts.port_range.end());
    if lo == 0 || lo > hi {
        return Err(ForwardError::Config(format!(
            "SNAT port range {lo}-{hi} is empty or includes 0"
        )));
    }
    if opts.lan.len() > FWD_EGRESS_MAX as usize {
        return Err(ForwardError::Config(format!(
            "at most {FWD_EGRESS_MAX} LAN interfaces"
        )));
    }
    if opts.max_connections == 0 || opts.max_routes == 0 {
        return Err(ForwardError::Config(
            "max_connections and max_routes must not be 0".into(),
        ));
    }
    Ok(())
}

/// Checks an advertised route and returns its LPM key data and length.
fn route_key(route: &ForwardRoute) -> Result<RouteKey, ForwardError> {
    match route.prefix {
        IpNet::V4(n) => {
            let n = n.trunc();
            Ok(RouteKey::V4(LpmKey::new(
                u32::from(n.prefix_len()),
                n.network().octets(),
            )))
        }
        IpNet::V6(n) => {
            via6::parse_via(n).map_err(|e| {
                ForwardError::Config(format!("{n} cannot be served by the XDP path: {e}"))
            })?;
            let n = n.trunc();
            Ok(RouteKey::Via(LpmKey::new(
                u32::from(n.prefix_len()),
                n.network().octets(),
            )))
        }
    }
}

enum RouteKey {
    V4(LpmKey<[u8; 4]>),
    Via(LpmKey<[u8; 16]>),
}

fn random_seed() -> u32 {
    let mut b = [0u8; 4];
    if rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut b).is_err() {
        // Not a secret: only spreads ports; fall back to the clock.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return t.subsec_nanos() ^ t.as_secs() as u32;
    }
    u32::from_ne_bytes(b)
}

/// CLOCK_MONOTONIC in ns (the clock of `bpf_ktime_get_ns`).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes into `ts`, which outlives the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn state_name(s: CtState) -> &'static str {
    match s {
        CtState::TcpOpening => "tcp_opening",
        CtState::TcpEstablished => "tcp_established",
        CtState::TcpClosing => "tcp_closing",
        CtState::TcpClosed => "tcp_closed",
        CtState::UdpUnreplied => "udp_unreplied",
        CtState::UdpReplied => "udp_replied",
        CtState::Icmp => "icmp",
    }
}

impl XdpForward {
    /// Loads both programs (verifier included) and fills their configuration, without
    /// attaching them: for [`XdpForward::test_run`], probes, or attaching step by step.
    /// LAN interface names are resolved in the calling thread's network namespace.
    pub fn load(opts: &ForwardOptions) -> Result<Self, ForwardError> {
        validate(opts)?;
        let object = ebpf_object().ok_or(XdpError::NotEmbedded)?;
        check_capabilities()?;
        raise_memlock_rlimit_if_needed();

        let mut ebpf = EbpfLoader::new()
            .set_max_entries(FWD_CT_ORIG_MAP, opts.max_connections)
            .set_max_entries(FWD_CT_REPLY_MAP, opts.max_connections)
            .set_max_entries(FWD_ADV_V4_MAP, opts.max_routes)
            .set_max_entries(FWD_ADV_VIA_MAP, opts.max_routes)
            .load(object)
            .map_err(XdpError::Object)?;
        let maps = Maps {
            config: take_map(&mut ebpf, FWD_CONFIG_MAP)?,
            egress: take_map(&mut ebpf, FWD_EGRESS_MAP)?,
            adv_v4: take_map(&mut ebpf, FWD_ADV_V4_MAP)?,
            adv_via: take_map(&mut ebpf, FWD_ADV_VIA_MAP)?,
            ct_orig: take_map(&mut ebpf, FWD_CT_ORIG_MAP)?,
            ct_reply: take_map(&mut ebpf, FWD_CT_REPLY_MAP)?,
            tun_counters: take_map(&mut ebpf, TUN_COUNTERS_MAP)?,
            lan_counters: take_map(&mut ebpf, LAN_COUNTERS_MAP)?,
            xsks: take_xsk_map(&mut ebpf)?,
        };
        for name in [TUN_FORWARD_PROGRAM, LAN_RETURN_PROGRAM] {
            load_program(&mut ebpf, name)?;
        }
        let seed = opts.seed.unwrap_or_else(random_seed);
        let tun_mtu = opts.tun_mtu.unwrap_or(1280);
        let config = config_value(opts, tun_mtu, seed);
        let mut fwd = XdpForward {
            maps,
            ebpf,
            opts: ForwardOptions {
                seed: Some(seed),
                ..opts.clone()
            },
            config,
            lan: BTreeMap::new(),
            routes: BTreeMap::new(),
            tun: None,
            lans: Vec::new(),
            sysctls: Vec::new(),
            xsk_lan: None,
            xsk_queues: BTreeSet::new(),
        };
        fwd.set_lan_interfaces(&opts.lan)?;
        fwd.write_config()?;
        Ok(fwd)
    }

    /// Loads both programs into the kernel (verifier included) and releases them: `Ok` if the
    /// fast path can be used by this process and kernel; the error says why not (for
    /// `XDP forwarding disabled: <reason>` at start-up).
    pub fn probe() -> Result<(), ForwardError> {
        Self::load(&ForwardOptions::default()).map(drop)
    }

    /// Loads both programs, attaches `tun_forward` to the TUN device `tun` (generic mode) and
    /// `lan_return` to every LAN interface of `opts`, all in the calling thread's network
    /// namespace. No route is served until [`XdpForward::set_routes`].
    pub fn attach(tun: &str, opts: &ForwardOptions) -> Result<Self, ForwardError> {
        let mut fwd = Self::load(opts)?;
        // LAN side first: a reply must never find its return path missing.
        for lan in &opts.lan {
            fwd.attach_lan(&lan.ifname, opts.lan_attach)?;
        }
        fwd.attach_tun(tun)?;
        Ok(fwd)
    }

    fn write_config(&mut self) -> Result<(), ForwardError> {
        self.maps
            .config
            .set(0, self.config, 0)
            .map_err(map_err(FWD_CONFIG_MAP))
    }

    fn attach_program(
        &mut self,
        name: &'static str,
        ifname: &str,
        mode: AttachPreference,
    ) -> Result<&'static str, ForwardError> {
        let program = program_mut(&mut self.ebpf, name)?;
        let mode = attach_xdp(program, name, ifname, mode)?;
        log::info!("XDP {name} attached to {ifname} ({mode} mode)");
        Ok(mode)
    }

    /// Attaches `tun_forward` to the TUN device (generic mode). With `tun_mtu: None` the
    /// device's MTU becomes `lan_return`'s size limit. Sets the TUN's `accept_local` (and
    /// loose `rp_filter` if the effective mode is strict), restored on drop: packets that
    /// `tun_forward` NATs and leaves to the kernel (no neighbour entry yet, GSO, fragmenting)
    /// carry the router's own address as source, which the kernel otherwise drops as martian.
    pub fn attach_tun(&mut self, ifname: &str) -> Result<(), ForwardError> {
        if self.tun.is_some() {
            return Err(ForwardError::Config(
                "tun_forward is already attached".into(),
            ));
        }
        if self.opts.tun_mtu.is_none() {
            let mtu = interface_mtu(ifname)?;
            self.config.tun_mtu = mtu.to_be_bytes();
            self.write_config()?;
        }
        for (key, why) in [
            (
                "/proc/sys/net/ipv4/conf/all/forwarding",
                "bpf_fib_lookup refuses to route and every packet goes to the kernel",
            ),
            (
                "/proc/sys/net/ipv6/conf/all/forwarding",
                "4via6 replies cannot be routed into the TUN",
            ),
        ] {
            if std::fs::read_to_string(key).is_ok_and(|v| v.trim() == "0") {
                log::warn!("XDP forwarding: {key} is 0: {why}");
            }
        }
        let mut changes = prepare_tun_sysctls(ifname)?;
        let mode = match self.attach_program(TUN_FORWARD_PROGRAM, ifname, AttachPreference::Generic)
        {
            Ok(m) => m,
            Err(e) => {
                restore_sysctls(&mut changes);
                return Err(e);
            }
        };
        self.sysctls = changes;
        self.tun = Some(Attachment {
            ifname: ifname.to_string(),
            mode,
        });
        Ok(())
    }

    /// Attaches `lan_return` to a LAN interface (which should be one of the configured ones).
    pub fn attach_lan(&mut self, ifname: &str, mode: AttachPreference) -> Result<(), ForwardError> {
        let mode = self.attach_program(LAN_RETURN_PROGRAM, ifname, mode)?;
        if mode == "generic" {
            log::warn!(
                "XDP lan_return runs in generic mode on {ifname} (after GRO): 4via6 replies \
                 that GRO merged cannot be translated; turn GRO off on {ifname} \
                 (ethtool -K {ifname} gro off) when serving 4via6 routes"
            );
        }
        self.lans.push(Attachment {
            ifname: ifname.to_string(),
            mode,
        });
        Ok(())
    }

    /// Replaces the LAN interfaces `tun_forward` may forward to (and their SNAT addresses),
    /// e.g. after an address change. Does not attach `lan_return` to new ones.
    pub fn set_lan_interfaces(&mut self, lan: &[LanInterface]) -> Result<(), ForwardError> {
        if lan.len() > FWD_EGRESS_MAX as usize {
            return Err(ForwardError::Config(format!(
                "at most {FWD_EGRESS_MAX} LAN interfaces"
            )));
        }
        let mut wanted = BTreeMap::new();
        for l in lan {
            wanted.insert(ifindex(&l.ifname)?, l.clone());
        }
        if let Some(xsk_lan) = self.xsk_lan {
            if !wanted.contains_key(&xsk_lan) {
                self.clear_xsks()?;
            }
        }
        for (idx, l) in &wanted {
            self.write_egress(*idx, l)?;
        }
        let stale: Vec<u32> = self
            .lan
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for idx in stale {
            match self.maps.egress.remove(&idx.to_be_bytes()) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(FWD_EGRESS_MAP)(e)),
            }
        }
        self.lan = wanted;
        self.opts.lan = lan.to_vec();
        Ok(())
    }

    fn write_egress(&mut self, idx: u32, l: &LanInterface) -> Result<(), ForwardError> {
        let flags = if self.xsk_lan == Some(idx) {
            EGRESS_FLAG_XSK
        } else {
            0
        };
        let v = FwdEgress {
            snat_v4: l.snat_v4.octets(),
            flags: flags.to_be_bytes(),
        };
        self.maps
            .egress
            .insert(idx.to_be_bytes(), v, 0)
            .map_err(map_err(FWD_EGRESS_MAP))
    }

    /// Hands the packets `lan_return` returns on the LAN interface and receive queue `socket`
    /// is bound to, to that AF_XDP socket instead of passing them to the kernel. Sockets serve
    /// one LAN interface at a time; the kernel drops a socket from the map when it is closed,
    /// after which that queue's packets are passed again. Replies whose transport checksum is
    /// partial (local senders, GRO) still go to the kernel, which completes it.
    pub fn register_xsk(&mut self, socket: &XdpSocket) -> Result<(), ForwardError> {
        let (idx, queue) = (socket.ifindex(), socket.queue());
        let Some(lan) = self.lan.get(&idx).cloned() else {
            return Err(ForwardError::Config(format!(
                "the AF_XDP socket's interface (ifindex {idx}) is not a LAN interface of the \
                 fast path"
            )));
        };
        let ifname = lan.ifname.clone();
        if queue >= LAN_XSK_MAX {
            return Err(ForwardError::Config(format!(
                "receive queue {queue}: AF_XDP sockets serve queues 0 to {}",
                LAN_XSK_MAX - 1
            )));
        }
        if let Some(other) = self.xsk_lan.filter(|&o| o != idx) {
            let other = self
                .lan
                .get(&other)
                .map_or_else(|| format!("ifindex {other}"), |l| l.ifname.clone());
            return Err(ForwardError::Config(format!(
                "AF_XDP sockets already serve {other}; unregister them before using {ifname}"
            )));
        }
        XskMap::try_from(&mut self.maps.xsks)
            .and_then(|mut m| m.set(queue, socket.as_fd(), 0))
            .map_err(map_err(LAN_XSK_MAP))?;
        self.xsk_queues.insert(queue);
        if self.xsk_lan != Some(idx) {
            self.xsk_lan = Some(idx);
            self.write_egress(idx, &lan)?;
        }
        Ok(())
    }

    /// Stops handing packets of receive queue `queue` to its AF_XDP socket (they are passed to
    /// the kernel again). Unknown queues are ignored.
    pub fn unregister_xsk(&mut self, queue: u32) -> Result<(), ForwardError> {
        if !self.xsk_queues.remove(&queue) {
            return Ok(());
        }
        self.delete_xsk(queue)?;
        if self.xsk_queues.is_empty() {
            self.clear_xsks()?;
        }
        Ok(())
    }

    fn delete_xsk(&self, queue: u32) -> Result<(), ForwardError> {
        let aya::maps::Map::XskMap(data) = &self.maps.xsks else {
            return Err(ForwardError::Config(format!(
                "{LAN_XSK_MAP} is not an XSK map"
            )));
        };
        map_delete_u32(data.fd().as_fd(), queue).map_err(|source| ForwardError::Io {
            what: format!("removing the AF_XDP socket of queue {queue} from {LAN_XSK_MAP}"),
            source,
        })
    }

    fn clear_xsks(&mut self) -> Result<(), ForwardError> {
        for queue in std::mem::take(&mut self.xsk_queues) {
            self.delete_xsk(queue)?;
        }
        if let Some(idx) = self.xsk_lan.take() {
            if let Some(lan) = self.lan.get(&idx).cloned() {
                self.write_egress(idx, &lan)?;
            }
        }
        Ok(())
    }

    /// The LAN interface whose returned packets go to AF_XDP sockets, and their queues.
    pub fn xsk_registrations(&self) -> Option<(&str, Vec<u32>)> {
        let idx = self.xsk_lan?;
        let name = self.lan.get(&idx).map(|l| l.ifname.as_str())?;
        Some((name, self.xsk_queues.iter().copied().collect()))
    }

    /// Turns SNAT of plain IPv4 subnet traffic on or off (`--snat-subnet-routes`). Existing
    /// connections keep their mapping until they idle out.
    pub fn set_snat(&mut self, on: bool) -> Result<(), ForwardError> {
        self.opts.snat_subnet_routes = on;
        let mut flags = self.config.flags();
        if on {
            flags |= FWD_FLAG_SNAT;
        } else {
            flags &= !FWD_FLAG_SNAT;
        }
        self.config.flags = flags.to_be_bytes();
        self.write_config()
    }

    /// Makes the advertised routes exactly `routes` (IPv4 subnets and 4via6 prefixes). All are
    /// checked before any is changed.
    pub fn set_routes(&mut self, routes: &[ForwardRoute]) -> Result<(), ForwardError> {
        let mut wanted = BTreeMap::new();
        for r in routes {
            route_key(r)?;
            wanted.insert(r.prefix.trunc(), r.table);
        }
        for (prefix, table) in &wanted {
            if self.routes.get(prefix) != Some(table) {
                self.insert_route(&ForwardRoute {
                    prefix: *prefix,
                    table: *table,
                })?;
            }
        }
        let stale: Vec<IpNet> = self
            .routes
            .keys()
            .filter(|p| !wanted.contains_key(p))
            .copied()
            .collect();
        for prefix in stale {
            self.remove_route(prefix)?;
        }
        Ok(())
    }

    /// Adds (or updates) one advertised route.
    pub fn add_route(&mut self, route: ForwardRoute) -> Result<(), ForwardError> {
        self.insert_route(&route)
    }

    fn insert_route(&mut self, route: &ForwardRoute) -> Result<(), ForwardError> {
        let table = route.table.to_be_bytes();
        match route_key(route)? {
            RouteKey::V4(k) => self
                .maps
                .adv_v4
                .insert(
                    &k,
                    AdvV4 {
                        flags: [0; 4],
                        table,
                    },
                    0,
                )
                .map_err(map_err(FWD_ADV_V4_MAP))?,
            RouteKey::Via(k) => {
                let IpNet::V6(n) = route.prefix else {
                    unreachable!("route_key returned a 4via6 key for an IPv4 prefix")
                };
                let site = via6::parse_via(n)
                    .map(|(s, _)| u32::from(s.get()))
                    .unwrap_or_default();
                self.maps
                    .adv_via
                    .insert(
                        &k,
                        AdvVia {
                            site: site.to_be_bytes(),
                            table,
                        },
                        0,
                    )
                    .map_err(map_err(FWD_ADV_VIA_MAP))?
            }
        }
        self.routes.insert(route.prefix.trunc(), route.table);
        Ok(())
    }

    /// Removes one advertised route (no error if it was not there).
    pub fn remove_route(&mut self, prefix: IpNet) -> Result<(), ForwardError> {
        let prefix = prefix.trunc();
        let result = match route_key(&ForwardRoute::from(prefix))? {
            RouteKey::V4(k) => self.maps.adv_v4.remove(&k).map_err(|e| (e, FWD_ADV_V4_MAP)),
            RouteKey::Via(k) => self
                .maps
                .adv_via
                .remove(&k)
                .map_err(|e| (e, FWD_ADV_VIA_MAP)),
        };
        match result {
            Ok(()) | Err((MapError::KeyNotFound, _)) => {}
            Err((e, name)) => return Err(map_err(name)(e)),
        }
        self.routes.remove(&prefix);
        Ok(())
    }

    /// The advertised routes currently served.
    pub fn routes(&self) -> Vec<ForwardRoute> {
        self.routes
            .iter()
            .map(|(p, t)| ForwardRoute {
                prefix: *p,
                table: *t,
            })
            .collect()
    }

    /// The routing table of the advertised IPv4 route that serves `addr`: the longest
    /// matching prefix, looked up in the kernel's LPM trie exactly as `tun_forward` does.
    /// `None` when no advertised route covers it.
    pub fn lookup_v4(&self, addr: Ipv4Addr) -> Result<Option<u32>, ForwardError> {
        match self.maps.adv_v4.get(&LpmKey::new(32, addr.octets()), 0) {
            Ok(v) => Ok(Some(u32::from_be_bytes(v.table))),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(FWD_ADV_V4_MAP)(e)),
        }
    }

    /// The settings in effect (with the seed that was chosen).
    pub fn options(&self) -> &ForwardOptions {
        &self.opts
    }

    /// TUN device and mode (`"generic"`), once attached.
    pub fn tun_attachment(&self) -> Option<(&str, &'static str)> {
        self.tun.as_ref().map(|a| (a.ifname.as_str(), a.mode))
    }

    /// LAN interfaces `lan_return` is attached to, with their modes.
    pub fn lan_attachments(&self) -> Vec<(&str, &'static str)> {
        self.lans
            .iter()
            .map(|a| (a.ifname.as_str(), a.mode))
            .collect()
    }

    /// Kernel id of a loaded program (as `bpftool prog show` shows it).
    pub fn program_id(&self, program: ForwardProgram) -> Option<u32> {
        let p: &Xdp = self.ebpf.program(program.name())?.try_into().ok()?;
        p.info().ok().map(|i| i.id())
    }

    /// Current counters of both programs, summed over CPUs.
    pub fn counters(&self) -> Result<ForwardCounters, ForwardError> {
        Ok(ForwardCounters {
            tun: TunForwardCounters::read(&self.maps.tun_counters, TUN_COUNTERS_MAP)?,
            lan: LanReturnCounters::read(&self.maps.lan_counters, LAN_COUNTERS_MAP)?,
        })
    }

    /// When connection `k` (entry `v`) was last seen: the later of its entry's stamp and its
    /// reply entry's (replies refresh only the reply entry), as the programs count it.
    fn last_seen(&self, k: &CtOrigKey, v: &CtOrigVal) -> Result<u64, ForwardError> {
        match self.maps.ct_reply.get(&v.reply, 0) {
            Ok(r) if r.orig == *k => Ok(ct_last_seen(v, &r)),
            Ok(_) | Err(MapError::KeyNotFound) => Ok(v.last_seen()),
            Err(e) => Err(map_err(FWD_CT_REPLY_MAP)(e)),
        }
    }

    /// Whether connection `k` (entry `v`) has idled out at `now` (the programs' rule). The
    /// reply entry is only read when the connection entry alone looks idle.
    fn is_expired(&self, k: &CtOrigKey, v: &CtOrigVal, now: u64) -> Result<bool, ForwardError> {
        Ok(self.config.expired(v.state, v.last_seen(), now)
            && self.config.expired(v.state, self.last_seen(k, v)?, now))
    }

    /// Removes connection entries that have idled out, and reply entries that lost their
    /// connection. The programs already ignore idle entries, and check a reply entry's
    /// connection at least once a second while replies flow (so expiry semantics do not depend
    /// on this); this frees their slots. Cost: two or three syscalls per entry — call it every
    /// few seconds, not per packet.
    pub fn expire(&mut self) -> Result<ExpireStats, ForwardError> {
        let now = monotonic_ns();
        let mut stats = ExpireStats::default();
        let mut dead = Vec::new();
        for item in self.maps.ct_orig.iter() {
            let (k, v) = match item {
                Ok(kv) => kv,
                // Deleted concurrently by LRU eviction: skip.
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(FWD_CT_ORIG_MAP)(e)),
            };
            if self.is_expired(&k, &v, now)? {
                dead.push((k, v.reply));
            } else {
                stats.remaining += 1;
            }
        }
        for (k, reply) in dead {
            // Re-check: a packet may have refreshed it meanwhile.
            match self.maps.ct_orig.get(&k, 0) {
                Ok(v) if !self.is_expired(&k, &v, monotonic_ns())? => {
                    stats.remaining += 1;
                    continue;
                }
                Ok(_) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(FWD_CT_ORIG_MAP)(e)),
            }
            let _ = self.maps.ct_orig.remove(&k);
            if let Ok(r) = self.maps.ct_reply.get(&reply, 0) {
                if r.orig == k {
                    let _ = self.maps.ct_reply.remove(&reply);
                }
            }
            stats.expired += 1;
        }
        let mut orphans = Vec::new();
        for item in self.maps.ct_reply.iter() {
            let (rk, rv) = match item {
                Ok(kv) => kv,
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(FWD_CT_REPLY_MAP)(e)),
            };
            match self.maps.ct_orig.get(&rv.orig, 0) {
                Ok(v) if v.reply == rk => {}
                Ok(_) | Err(MapError::KeyNotFound) => orphans.push(rk),
                Err(e) => return Err(map_err(FWD_CT_ORIG_MAP)(e)),
            }
        }
        for rk in orphans {
            let _ = self.maps.ct_reply.remove(&rk);
            stats.orphans += 1;
        }
        Ok(stats)
    }

    /// Number of connection entries (idle ones included until [`XdpForward::expire`]).
    pub fn connection_count(&self) -> Result<usize, ForwardError> {
        let mut n = 0;
        for k in self.maps.ct_orig.keys() {
            match k {
                Ok(_) => n += 1,
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(FWD_CT_ORIG_MAP)(e)),
            }
        }
        Ok(n)
    }

    /// All connection entries.
    pub fn connections(&self) -> Result<Vec<ForwardConn>, ForwardError> {
        let now = monotonic_ns();
        let mut out = Vec::new();
        for item in self.maps.ct_orig.iter() {
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(FWD_CT_ORIG_MAP)(e)),
            };
            let ip = |b: [u8; 16]| -> IpAddr {
                if k.family == CT_FAMILY_V6 {
                    IpAddr::V6(Ipv6Addr::from(b))
                } else {
                    IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                }
            };
            out.push(ForwardConn {
                proto: match k.proto {
                    PROTO_TCP => "tcp",
                    PROTO_UDP => "udp",
                    PROTO_ICMP => "icmp",
                    _ => "other",
                },
                src: ip(k.src),
                sport: u16::from_be_bytes(k.sport),
                dst: ip(k.dst),
                dport: u16::from_be_bytes(k.dport),
                snat: Ipv4Addr::from(v.reply.dst),
                snat_port: u16::from_be_bytes(v.reply.dport),
                lan_dst: Ipv4Addr::from(v.reply.src),
                via6: v.flags & CT_FLAG_VIA6 != 0,
                state: state_name(CtState::from_u8(v.state)),
                idle: Duration::from_nanos(now.saturating_sub(self.last_seen(&k, &v)?)),
                expired: self.is_expired(&k, &v, now)?,
            });
        }
        Ok(out)
    }

    /// Runs `program` once on `packet` with `BPF_PROG_TEST_RUN` as if it had arrived on
    /// interface `ingress_ifindex` (0: loopback), in the calling thread's network namespace
    /// (FIB lookups see that namespace's routes and neighbours). Maps are shared with the
    /// attached programs. Redirects are not carried out; the output is the packet as it
    /// would leave.
    pub fn test_run(
        &self,
        program: ForwardProgram,
        packet: &[u8],
        ingress_ifindex: u32,
    ) -> Result<TestRun, ForwardError> {
        self.test_run_repeat(program, packet, ingress_ifindex, 1)
    }

    /// [`XdpForward::test_run`] `repeat` times (for timing; state changes repeat too).
    pub fn test_run_repeat(
        &self,
        program: ForwardProgram,
        packet: &[u8],
        ingress_ifindex: u32,
        repeat: u32,
    ) -> Result<TestRun, ForwardError> {
        let name = program.name();
        let fd = program_fd(&self.ebpf, name)?;
        prog_test_run_xdp(fd.as_raw_fd(), packet, ingress_ifindex, repeat).map_err(|source| {
            ForwardError::Io {
                what: format!("BPF_PROG_TEST_RUN of {name}"),
                source,
            }
        })
    }
}

impl Drop for XdpForward {
    fn drop(&mut self) {
        // Dropping `self.ebpf` (after this) detaches the links and unloads the programs.
        restore_sysctls(&mut self.sysctls);
        if let Some(t) = &self.tun {
            log::info!("XDP {TUN_FORWARD_PROGRAM} detached from {}", t.ifname);
        }
        for l in &self.lans {
            log::info!("XDP {LAN_RETURN_PROGRAM} detached from {}", l.ifname);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_network_order() {
        let opts = ForwardOptions::default();
        let c = config_value(&opts, 1280, 7);
        assert!(c.has_flag(FWD_FLAG_ENABLED));
        assert!(c.has_flag(FWD_FLAG_SNAT));
        assert_eq!(c.port_min(), 61_000);
        assert_eq!(c.port_max(), 65_535);
        assert_eq!(c.tun_mtu(), 1280);
        assert_eq!(c.seed(), 7);
        assert_eq!(
            c.timeout_secs(CtState::TcpEstablished.class()),
            2 * 3600 + 4 * 60
        );
        assert_eq!(c.timeout_secs(CtState::Icmp.class()), 30);
        assert_eq!(
            c.timeouts.map(u32::from_be_bytes),
            gateway_common::forward::CT_DEFAULT_TIMEOUTS
        );
        let off = config_value(
            &ForwardOptions {
                snat_subnet_routes: false,
                ..opts
            },
            0,
            0,
        );
        assert!(!off.has_flag(FWD_FLAG_SNAT));
    }

    #[test]
    fn options_are_validated() {
        let bad = ForwardOptions {
            port_range: 0..=10,
            ..ForwardOptions::default()
        };
        assert!(matches!(validate(&bad), Err(ForwardError::Config(_))));
        #[allow(clippy::reversed_empty_ranges)]
        let bad = ForwardOptions {
            port_range: 10..=9,
            ..ForwardOptions::default()
        };
        assert!(validate(&bad).is_err());
        assert!(validate(&ForwardOptions::default()).is_ok());
    }

    #[test]
    fn route_keys() {
        let k = route_key(&ForwardRoute::from("10.1.1.7/24".parse::<IpNet>().unwrap())).unwrap();
        match k {
            RouteKey::V4(k) => {
                assert_eq!(k.prefix_len(), 24);
                assert_eq!(k.data(), [10, 1, 1, 0]);
            }
            RouteKey::Via(_) => panic!("want a v4 key"),
        }
        let via: IpNet = "fd7a:115c:a1e0:b1a:0:7:a01:100/120".parse().unwrap();
        match route_key(&ForwardRoute::from(via)).unwrap() {
            RouteKey::Via(k) => {
                assert_eq!(k.prefix_len(), 120);
                assert_eq!(k.data()[8..12], [0, 0, 0, 7]);
            }
            RouteKey::V4(_) => panic!("want a via key"),
        }
        for bad in [
            "fd00::/64",
            "fd7a:115c:a1e0:b1a::/64",
            "fd7a:115c:a1e0:b1a:0:7:7f00:0/120",
            "fd7a:115c:a1e0:b1a:1:0:a01:100/120",
        ] {
            let net: IpNet = bad.parse().unwrap();
            assert!(
                matches!(
                    route_key(&ForwardRoute::from(net)),
                    Err(ForwardError::Config(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn expiry_rule() {
        let cfg = config_value(&ForwardOptions::default(), 1280, 0);
        let v = CtOrigVal {
            state: CtState::Icmp as u8,
            last_seen: 1_000_000_000u64.to_be_bytes(),
            ..CtOrigVal::default()
        };
        let icmp = CtState::Icmp as u8;
        assert!(!cfg.expired(icmp, v.last_seen(), 30_999_999_999));
        assert!(cfg.expired(icmp, v.last_seen(), 31_000_000_000));
        assert!(!cfg.expired(icmp, v.last_seen(), 5));
        // A later reply stamp keeps the connection alive.
        let r = CtReplyVal {
            last_seen: 20_000_000_000u64.to_be_bytes(),
            ..CtReplyVal::default()
        };
        assert_eq!(ct_last_seen(&v, &r), 20_000_000_000);
        assert!(!cfg.expired(icmp, ct_last_seen(&v, &r), 31_000_000_000));
        assert!(cfg.expired(icmp, ct_last_seen(&v, &r), 50_000_000_000));
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<XdpForward>();
        check::<ForwardError>();
    }

    #[cfg(not(tailgate_ebpf_obj))]
    #[test]
    fn probe_without_object_is_descriptive() {
        let err = XdpForward::probe().unwrap_err();
        assert!(
            matches!(err, ForwardError::Xdp(XdpError::NotEmbedded)),
            "{err}"
        );
    }
}
