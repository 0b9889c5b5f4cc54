//! The node status reported by `tailgate status`, as JSON and as text.

use std::fmt::Write as _;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::device::counters::BatchSnapshot;
use crate::device::CounterSnapshot;
use crate::forwarding::RoutingStatus;

/// Everything `tailgate status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// TUN interface name.
    pub interface: String,
    /// Our public key (base64).
    pub public_key: String,
    /// UDP port in use.
    pub listen_port: u16,
    /// Tunnel MTU.
    pub mtu: u16,
    /// Data path in use for tunnel packets.
    pub datapath: String,
    /// The XDP program's state.
    pub xdp: XdpStatus,
    /// Userspace drop counters.
    pub drops: CounterSnapshot,
    /// Syscalls versus packets on each side of the data path.
    pub batching: BatchSnapshot,
    /// The tailnet policy's packet filter.
    #[serde(default)]
    pub filter: crate::filter::FilterStatus,
    /// MagicDNS query counters (absent when the resolver does not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<crate::dns::DnsStatsSnapshot>,
    /// Routing preferences and what is in force for them.
    pub routing: RoutingStatus,
    /// Peers, sorted by public key.
    pub peers: Vec<PeerStatus>,
    /// The coordination-server session (control mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlStatus>,
    /// Relay connections (control mode with a relay map).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<crate::traversal::relay::LinkStatus>,
    /// The peer relay this node runs for the tailnet (`--advertise-peer-relay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_relay: Option<crate::peer_relay::server::PeerRelayStatus>,
}

/// The node's session with its coordination server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ControlStatus {
    /// `stopped`, `starting`, `running`, `reconnecting` or `needs-login`.
    pub state: String,
    /// The login server, once `tailgate up` ran.
    pub login_server: Option<String>,
    /// This node's name in the tailnet.
    pub name: Option<String>,
    /// This node's tailnet addresses.
    pub addresses: Vec<String>,
    /// The last error (lost session, refused login), if any.
    pub error: Option<String>,
    /// Version of the netmap in force.
    pub netmap_version: Option<u64>,
    /// Primary routers this client found silent and routed around (before the server's
    /// netmap moved their routes).
    #[serde(default)]
    pub failovers: u64,
}

/// State of the `wan_ingress` XDP program.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct XdpStatus {
    /// Whether it is attached.
    pub attached: bool,
    /// Interface it is attached to.
    pub interface: Option<String>,
    /// "native" or "generic" when attached.
    pub mode: Option<String>,
    /// Why it is not attached.
    pub reason: Option<String>,
    /// Per-reason packet counters, summed over CPUs.
    pub counters: Option<serde_json::Map<String, serde_json::Value>>,
}

/// One peer's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Public key (base64).
    pub public_key: String,
    /// Current endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Allowed IPs.
    pub allowed_ips: Vec<String>,
    /// Seconds since the latest handshake, if there was one.
    pub latest_handshake_secs_ago: Option<u64>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Datagrams received from the peer.
    #[serde(default)]
    pub rx_packets: u64,
    /// Datagrams sent to the peer.
    #[serde(default)]
    pub tx_packets: u64,
    /// Handshakes completed with the peer.
    #[serde(default)]
    pub handshakes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Persistent keepalive interval (0 = off).
    pub persistent_keepalive: u16,
    /// The peer's name (control mode, or `name` in the config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The peer's tailnet addresses (control mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<String>>,
    /// Whether the coordination server sees the peer online (control mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// Approved subnet routes it is primary for (control mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_routes: Option<Vec<String>>,
    /// Approved subnet routes it stands by for (control mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_routes: Option<Vec<String>>,
    /// Its operating system, as it reported it (control mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// How packets reach it: `direct IP:PORT`, `relay REGION` or `none` (control mode with a
    /// relay map).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Round-trip time of its direct path, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_rtt_ms: Option<f64>,
}

impl Status {
    /// Human-readable rendering, in the spirit of `wg show`.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "interface: {}", self.interface);
        let _ = writeln!(s, "  public key: {}", self.public_key);
        let _ = writeln!(s, "  listening port: {}", self.listen_port);
        let _ = writeln!(s, "  mtu: {}", self.mtu);
        let _ = writeln!(s, "  datapath: {}", self.datapath);
        match (&self.xdp.interface, &self.xdp.mode) {
            (Some(i), Some(m)) if self.xdp.attached => {
                let _ = writeln!(s, "  xdp: wan_ingress on {i} ({m} mode)");
            }
            _ => {
                let reason = self.xdp.reason.as_deref().unwrap_or("not attached");
                let _ = writeln!(s, "  xdp: off ({reason})");
            }
        }
        if let Some(c) = &self.xdp.counters {
            let list: Vec<String> = c.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(s, "  xdp counters: {}", list.join(" "));
        }
        let f = &self.filter;
        if f.enabled {
            let by_acl: Vec<String> = f
                .accepted_by_acl
                .iter()
                .map(|(k, v)| format!("acls[{k}]={v}"))
                .collect();
            let _ = writeln!(
                s,
                "  packet filter: {} rule(s), {} flow(s); new flows accepted: {}; dropped: {} (no rule), {} (malformed)",
                f.rules,
                f.flows,
                if by_acl.is_empty() { "none".into() } else { by_acl.join(" ") },
                f.dropped_no_rule,
                f.dropped_malformed
            );
        } else {
            let _ = writeln!(
                s,
                "  packet filter: off (no policy rules; everything passes)"
            );
        }
        let d = serde_json::to_value(&self.drops).unwrap_or_default();
        if let Some(map) = d.as_object() {
            let nonzero: Vec<String> = map
                .iter()
                .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if !nonzero.is_empty() {
                let _ = writeln!(s, "  userspace drops: {}", nonzero.join(" "));
            }
        }
        let b = &self.batching;
        let per = |packets: u64, calls: u64| {
            if calls == 0 {
                0.0
            } else {
                packets as f64 / calls as f64
            }
        };
        let _ = writeln!(
            s,
            "  batching: {:.1} packets per TUN read, {:.1} datagrams per UDP receive, {:.1} packets per TUN write",
            per(b.tun_read_packets, b.tun_reads),
            per(b.udp_recv_datagrams, b.udp_recvs),
            per(b.tun_write_packets, b.tun_writes)
        );
        if b.xsk_reads > 0 {
            let _ = writeln!(
                s,
                "  AF_XDP: {} replies read from the sockets, {:.1} per batch",
                b.xsk_read_packets,
                per(b.xsk_read_packets, b.xsk_reads)
            );
        }
        let r = &self.routing;
        if !r.advertised.is_empty() {
            let _ = writeln!(s, "  advertised routes: {}", r.advertised.join(", "));
            let snat = if r.prefs.snat_subnet_routes {
                "on"
            } else {
                "off"
            };
            let _ = writeln!(
                s,
                "  subnet SNAT: {snat}; forwarding: {}",
                r.forwarding_path
            );
            let f = &r.fast_path;
            if let Some(c) = &f.counters {
                let n = |side: &str, key: &str| c[side][key].as_u64().unwrap_or(0);
                let _ = writeln!(
                    s,
                    "  XDP forwarded: {} IPv4 + {} 4via6 to the LAN, {} + {} replies back; {} connection(s)",
                    n("tun", "forwarded_v4"),
                    n("tun", "forwarded_via6"),
                    n("lan", "returned_v4"),
                    n("lan", "returned_via6"),
                    f.connections
                );
                let xsk = n("lan", "redirected_xsk");
                if xsk > 0 {
                    let _ = writeln!(
                        s,
                        "  XDP replies handed to AF_XDP sockets (not the kernel): {xsk}"
                    );
                }
            }
            if let Some(ret) = &f.return_path {
                let _ = writeln!(s, "  return: {ret}");
            }
            for k in &f.kernel_routes {
                let _ = writeln!(s, "  kernel path: {k}");
            }
        }
        if r.prefs.accept_routes {
            let _ = writeln!(s, "  accepting subnet routes from peers");
        }
        if let Some(exit) = &r.prefs.exit_node {
            let lan = if r.prefs.exit_node_allow_lan_access {
                " (LAN stays direct)"
            } else {
                ""
            };
            let _ = writeln!(s, "  exit node: {exit}{lan}");
        }
        if let Some(c) = &self.control {
            let _ = writeln!(
                s,
                "  control: {} ({}){}",
                c.state,
                c.login_server.as_deref().unwrap_or("no login server"),
                c.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
            if let Some(n) = &c.name {
                let _ = writeln!(s, "  name: {n} ({})", c.addresses.join(", "));
            }
        }
        for r in &self.relays {
            let _ = writeln!(
                s,
                "relay region {} ({}){}: {}",
                r.region,
                r.code,
                if r.home { ", home" } else { "" },
                if r.connected {
                    "connected"
                } else {
                    "connecting"
                }
            );
        }
        if let Some(r) = &self.peer_relay {
            let _ = writeln!(
                s,
                "peer relay: UDP port {}, {} session(s), {} packets forwarded, {} dropped",
                r.port, r.sessions, r.forwarded_packets, r.dropped
            );
        }
        for p in &self.peers {
            let _ = writeln!(s, "\npeer: {}", p.public_key);
            if let Some(n) = &p.name {
                let online = match p.online {
                    Some(true) => " (online)",
                    Some(false) => " (offline)",
                    None => "",
                };
                let os =
                    p.os.as_deref()
                        .filter(|o| !o.is_empty())
                        .map(|o| format!(", {o}"))
                        .unwrap_or_default();
                let _ = writeln!(s, "  name: {n}{online}{os}");
            }
            if let Some(a) = &p.addresses {
                let _ = writeln!(s, "  addresses: {}", a.join(", "));
            }
            if let Some(r) = p.primary_routes.as_ref().filter(|r| !r.is_empty()) {
                let _ = writeln!(s, "  primary routes: {}", r.join(", "));
            }
            if let Some(r) = p.standby_routes.as_ref().filter(|r| !r.is_empty()) {
                let _ = writeln!(s, "  standby routes: {}", r.join(", "));
            }
            if let Some(path) = &p.path {
                let rtt = p
                    .direct_rtt_ms
                    .filter(|_| path.starts_with("direct"))
                    .map(|ms| format!(" ({ms:.1} ms)"))
                    .unwrap_or_default();
                let _ = writeln!(s, "  path: {path}{rtt}");
            } else if let Some(e) = p.endpoint {
                let _ = writeln!(s, "  endpoint: {e}");
            }
            let _ = writeln!(s, "  allowed ips: {}", p.allowed_ips.join(", "));
            match p.latest_handshake_secs_ago {
                Some(secs) => {
                    let _ = writeln!(s, "  latest handshake: {secs} seconds ago");
                }
                None => {
                    let _ = writeln!(s, "  latest handshake: never");
                }
            }
            let _ = writeln!(
                s,
                "  transfer: {} B received, {} B sent",
                p.rx_bytes, p.tx_bytes
            );
            if p.persistent_keepalive != 0 {
                let _ = writeln!(
                    s,
                    "  persistent keepalive: every {} seconds",
                    p.persistent_keepalive
                );
            }
        }
        s
    }
}
