//! Port mapping: asks the home router for a public UDP port for the WireGuard port, with PCP
//! (RFC 6887), NAT-PMP (RFC 6886) or UPnP IGD, and reports which of them the router speaks.
//!
//! [`probe`] is what `tailgate netcheck` shows; [`PortMapper`] keeps one mapping alive (renewed
//! at half its lifetime) and deletes it when stopped. The per-protocol clients
//! ([`natpmp::map_udp`], [`pcp::map_udp`], [`upnp::map_udp`]) can also be used on their own.
//! Every wire parser is bounded and returns an error on junk instead of panicking.

pub mod http;
pub mod natpmp;
pub mod pcp;
mod retransmit;
pub mod upnp;

use crate::device::lock;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

/// The UDP port PCP and NAT-PMP servers listen on.
pub const PCP_PMP_PORT: u16 = 5351;

/// The lifetime asked for: two hours, as RFC 6886 recommends.
pub const REQUESTED_LIFETIME: Duration = Duration::from_secs(7200);

/// How long one request to the gateway may take in [`PortMapper`].
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Which port-mapping protocols the gateway answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Probe {
    /// An UPnP IGD answered the SSDP search.
    pub upnp: bool,
    /// A NAT-PMP server answered the external-address request.
    pub pmp: bool,
    /// A PCP (version 2) server answered an ANNOUNCE request.
    pub pcp: bool,
}

/// A port-mapping protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// UPnP Internet Gateway Device (WANIPConnection / WANPPPConnection).
    Upnp,
    /// NAT-PMP (RFC 6886).
    Pmp,
    /// Port Control Protocol (RFC 6887).
    Pcp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Upnp => "UPnP",
            Protocol::Pmp => "NAT-PMP",
            Protocol::Pcp => "PCP",
        })
    }
}

/// A mapping the gateway granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The protocol that made it.
    pub protocol: Protocol,
    /// The public address and port that reach the local port.
    pub external: SocketAddr,
    /// How long the gateway keeps it (UPnP permanent leases are reported as one hour, the
    /// renewal period used for them).
    pub lifetime: Duration,
    /// The local UDP port it forwards to.
    pub internal_port: u16,
    /// The gateway that granted it.
    pub gateway: Ipv4Addr,
    /// Our address toward the gateway (the mapping's internal address).
    pub local: Ipv4Addr,
    /// When it was granted.
    pub granted_at: Instant,
    /// What deleting or renewing it needs.
    pub(crate) handle: Handle,
}

/// Protocol-specific state of a mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Handle {
    /// NAT-PMP needs nothing beyond the ports.
    Pmp,
    /// PCP renewals and deletions repeat the nonce.
    Pcp {
        /// The MAP nonce.
        nonce: [u8; 12],
    },
    /// UPnP needs the control URL and service type found at discovery.
    Upnp {
        /// The WANIPConnection/WANPPPConnection control URL.
        control_url: String,
        /// The service type for the SOAPAction header.
        service_type: String,
    },
}

impl Mapping {
    /// Deletes the mapping at the gateway, within `timeout`.
    pub async fn delete(&self, timeout: Duration) -> Result<()> {
        match self.protocol {
            Protocol::Pmp => natpmp::unmap(self, timeout).await,
            Protocol::Pcp => pcp::unmap(self, timeout).await,
            Protocol::Upnp => upnp::unmap(self, timeout).await,
        }
    }

    /// Asks the gateway to extend the mapping (same protocol, same external port if it can).
    pub async fn renew(&self, timeout: Duration) -> Result<Mapping> {
        match &self.handle {
            Handle::Pmp => {
                natpmp::map_udp_port(
                    self.gateway,
                    self.internal_port,
                    self.external.port(),
                    timeout,
                )
                .await
            }
            Handle::Pcp { nonce } => {
                pcp::map_udp_with(
                    self.gateway,
                    self.internal_port,
                    self.external.port(),
                    *nonce,
                    REQUESTED_LIFETIME,
                    timeout,
                )
                .await
            }
            Handle::Upnp { .. } => upnp::renew(self, timeout).await,
        }
    }
}

/// The IPv4 default gateway from `/proc/net/route`, if there is one. The calling thread's
/// view (`/proc/thread-self/net/route`) is read first: a thread may have entered another
/// network namespace than the process's main thread.
pub fn default_gateway() -> Option<Ipv4Addr> {
    let table = std::fs::read_to_string("/proc/thread-self/net/route")
        .or_else(|_| std::fs::read_to_string("/proc/net/route"))
        .ok()?;
    parse_route_table(&table)
}

/// The gateway of the first IPv4 default route in `/proc/net/route` text (destination and
/// mask 0, RTF_GATEWAY set).
pub fn parse_route_table(table: &str) -> Option<Ipv4Addr> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let (Some(dest), Some(gw), Some(flags), Some(mask)) =
            (hex(f[1]), hex(f[2]), hex(f[3]), hex(f[7]))
        else {
            continue;
        };
        if dest == 0 && mask == 0 && flags & RTF_UP != 0 && flags & RTF_GATEWAY != 0 && gw != 0 {
            // The kernel prints the address in host byte order of a network-order u32.
            return Some(Ipv4Addr::from(gw.to_le_bytes()));
        }
    }
    None
}

/// `gateway`, else the default gateway.
fn gateway_or_default(gateway: Option<Ipv4Addr>) -> Result<Ipv4Addr> {
    gateway
        .or_else(default_gateway)
        .ok_or_else(|| anyhow!("no IPv4 default gateway"))
}

/// Our IPv4 address toward `gateway` (the source address the kernel picks for it).
pub fn local_addr_toward(gateway: Ipv4Addr) -> Result<Ipv4Addr> {
    let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("UDP socket")?;
    s.connect((gateway, PCP_PMP_PORT))
        .with_context(|| format!("no route to the gateway {gateway}"))?;
    match s.local_addr()? {
        SocketAddr::V4(a) => Ok(*a.ip()),
        SocketAddr::V6(a) => Err(anyhow!("unexpected IPv6 source address {a}")),
    }
}

/// A UDP socket on our address toward `gateway`, connected to `gateway:port`.
pub(crate) async fn connected_socket(
    gateway: Ipv4Addr,
    port: u16,
) -> Result<(tokio::net::UdpSocket, Ipv4Addr)> {
    let local = local_addr_toward(gateway)?;
    let sock = tokio::net::UdpSocket::bind(SocketAddrV4::new(local, 0))
        .await
        .context("UDP socket")?;
    sock.connect((gateway, port)).await.context("connect")?;
    Ok((sock, local))
}

/// Probes the default gateway (read from /proc/net/route, or `gateway` if given) with all
/// three protocols in parallel, each bounded by `timeout`.
pub async fn probe(gateway: Option<Ipv4Addr>, timeout: Duration) -> Probe {
    let Ok(gw) = gateway_or_default(gateway) else {
        return Probe::default();
    };
    let (upnp, pmp, pcp) = tokio::join!(
        upnp::probe(gw, timeout),
        natpmp::probe(gw, timeout),
        pcp::probe(gw, timeout),
    );
    Probe { upnp, pmp, pcp }
}

/// Asks `gateway` for a UDP mapping of `local_port` with one protocol.
pub async fn map_udp(
    protocol: Protocol,
    gateway: Ipv4Addr,
    local_port: u16,
    timeout: Duration,
) -> Result<Mapping> {
    match protocol {
        Protocol::Pmp => natpmp::map_udp(gateway, local_port, timeout).await,
        Protocol::Pcp => pcp::map_udp(gateway, local_port, timeout).await,
        Protocol::Upnp => upnp::map_udp(gateway, local_port, timeout).await,
    }
}

/// The order [`PortMapper::start`] tries the protocols in.
pub const DEFAULT_ORDER: [Protocol; 3] = [Protocol::Pcp, Protocol::Pmp, Protocol::Upnp];

/// Keeps a UDP mapping of `local_port` alive: tries PCP, then NAT-PMP, then UPnP; renews at
/// half the lifetime; deletes the mapping when dropped/stopped (best effort).
pub struct PortMapper {
    shared: Arc<Shared>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// State shared with the mapper task.
struct Shared {
    current: Mutex<Option<Mapping>>,
    last_error: Mutex<Option<String>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl PortMapper {
    /// Starts keeping a mapping of `local_port` at `gateway` (else the default gateway).
    /// Spawns a tokio task, so it must be called inside a runtime.
    pub fn start(local_port: u16, gateway: Option<Ipv4Addr>) -> Arc<PortMapper> {
        Self::start_with(local_port, gateway, &DEFAULT_ORDER)
    }

    /// [`PortMapper::start`] trying only `protocols`, in that order.
    pub fn start_with(
        local_port: u16,
        gateway: Option<Ipv4Addr>,
        protocols: &[Protocol],
    ) -> Arc<PortMapper> {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared {
            current: Mutex::new(None),
            last_error: Mutex::new(None),
            stop,
        });
        let task = tokio::spawn(run(
            shared.clone(),
            stop_rx,
            local_port,
            gateway,
            protocols.to_vec(),
        ));
        Arc::new(PortMapper {
            shared,
            task: Mutex::new(Some(task)),
        })
    }

    /// The live mapping, if any.
    pub fn current(&self) -> Option<Mapping> {
        let m = lock(&self.shared.current).clone()?;
        (m.granted_at.elapsed() < m.lifetime).then_some(m)
    }

    /// Why the last attempt to get or renew a mapping failed, if it did.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.shared.last_error).clone()
    }

    /// Deletes the mapping (best effort) and ends the task.
    pub fn stop(&self) {
        self.shared.stop.send_replace(true);
    }

    /// [`PortMapper::stop`], then waits until the task has deleted the mapping and ended.
    pub async fn shutdown(&self) {
        self.stop();
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for PortMapper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The mapper task: get a mapping, renew it at half its lifetime, delete it on stop.
async fn run(
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    local_port: u16,
    gateway: Option<Ipv4Addr>,
    protocols: Vec<Protocol>,
) {
    let mut retry = Duration::from_secs(5);
    loop {
        if *stop.borrow() {
            break;
        }
        let existing = lock(&shared.current).clone();
        let got = match existing {
            Some(m) => match m.renew(REQUEST_TIMEOUT).await {
                Ok(r) => Ok(r),
                Err(e) => {
                    log::info!("portmap: renewing the {} mapping failed: {e:#}", m.protocol);
                    obtain(local_port, gateway, &protocols).await
                }
            },
            None => obtain(local_port, gateway, &protocols).await,
        };
        let wait = match got {
            Ok(m) => {
                log::info!(
                    "portmap: {} mapped {} to local port {local_port} for {:?}",
                    m.protocol,
                    m.external,
                    m.lifetime
                );
                let wait = (m.lifetime / 2).max(Duration::from_secs(1));
                *lock(&shared.current) = Some(m);
                *lock(&shared.last_error) = None;
                retry = Duration::from_secs(5);
                wait
            }
            Err(e) => {
                log::debug!("portmap: no mapping: {e:#}");
                *lock(&shared.last_error) = Some(format!("{e:#}"));
                // Keep a mapping that has not expired yet; the next round tries again.
                {
                    let mut cur = lock(&shared.current);
                    if cur
                        .as_ref()
                        .is_some_and(|m| m.granted_at.elapsed() >= m.lifetime)
                    {
                        *cur = None;
                    }
                }
                let wait = retry;
                retry = (retry * 2).min(Duration::from_secs(300));
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    let last = lock(&shared.current).take();
    if let Some(m) = last {
        if let Err(e) = m.delete(REQUEST_TIMEOUT).await {
            log::info!("portmap: deleting the {} mapping failed: {e:#}", m.protocol);
        }
    }
}

/// The first mapping one of `protocols` grants, in order.
async fn obtain(
    local_port: u16,
    gateway: Option<Ipv4Addr>,
    protocols: &[Protocol],
) -> Result<Mapping> {
    let gw = gateway_or_default(gateway)?;
    let mut errors = Vec::new();
    for &p in protocols {
        match map_udp(p, gw, local_port, REQUEST_TIMEOUT).await {
            Ok(m) => return Ok(m),
            Err(e) => errors.push(format!("{p}: {e:#}")),
        }
    }
    Err(anyhow!(
        "no port mapping from {gw}: {}",
        if errors.is_empty() {
            "no protocol to try".to_string()
        } else {
            errors.join("; ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_route_is_parsed_from_proc_net_route() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t0005A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\t0105A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(
            parse_route_table(table),
            Some(Ipv4Addr::new(192, 168, 5, 1))
        );
        assert_eq!(parse_route_table(""), None);
        assert_eq!(parse_route_table("junk\nx y z\n\u{0}\u{1}"), None);
        // A default route without a gateway (point-to-point) is not a gateway.
        let p2p = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                   wg0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\n";
        assert_eq!(parse_route_table(p2p), None);
    }

    #[test]
    fn protocols_display_their_names() {
        assert_eq!(Protocol::Upnp.to_string(), "UPnP");
        assert_eq!(Protocol::Pmp.to_string(), "NAT-PMP");
        assert_eq!(Protocol::Pcp.to_string(), "PCP");
    }

    #[test]
    fn probe_serializes_as_three_booleans() {
        let p = Probe {
            upnp: true,
            pmp: false,
            pcp: true,
        };
        let j = serde_json::to_string(&p).unwrap();
        assert_eq!(j, r#"{"upnp":true,"pmp":false,"pcp":true}"#);
        assert_eq!(serde_json::from_str::<Probe>(&j).unwrap(), p);
    }
}
