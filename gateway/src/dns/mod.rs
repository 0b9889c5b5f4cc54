//! MagicDNS: the node's resolver at 100.100.100.100 and fd7a:115c:a1e0::53.
//!
//! The resolver answers the tailnet's names from a [`DnsView`] (peers, the node itself, the
//! tailnet domain) and forwards everything else: to the nameservers of the most specific
//! split-DNS route, or to the global nameservers (classic DNS over UDP with TCP fallback, or
//! DNS over HTTPS). `docs/dns.md` describes what it answers and where it differs from Tailscale.
//!
//! One concern per module:
//!
//! - [`view`]: the data the daemon pushes ([`DnsView`]) and how to build it from a netmap or
//!   from static peers;
//! - [`zone`]: pure local answers (names, PTR, 4via6 names, NXDOMAIN vs NODATA, NOTIMP);
//! - [`split`]: pure choice of upstreams (longest split-DNS suffix, then global);
//! - [`forward`]: the upstream client (UDP, TCP, DoH) with timeouts;
//! - [`handler`]: the hickory-server [`RequestHandler`](hickory_server::server::RequestHandler)
//!   that ties them together, and the parse path for raw messages;
//! - [`server`]: [`DnsServer`], the UDP and TCP listeners;
//! - [`stats`]: counters for `tailgate dns status`;
//! - [`resolv_conf`]: reading and writing resolv.conf;
//! - [`os`]: pointing the system at the resolver (`accept_dns`): systemd-resolved or
//!   resolv.conf, restored on shutdown and after a crash.
//!
//! The daemon's part: keep a `tokio::sync::watch::Sender<DnsView>`, start a [`DnsServer`] with
//! its receiver, and send a new view whenever a netmap (or the static config) changes. Queries
//! use the newest view as soon as it is sent; when the sender goes away the last view stays.

pub mod forward;
pub mod handler;
pub mod os;
pub mod query;
pub mod resolv_conf;
pub mod server;
pub mod service;
pub mod split;
pub mod stats;
pub mod view;
pub mod zone;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub use forward::{ForwardError, ForwardOptions, Forwarder};
pub use handler::{parse_message, MagicDns, Parsed};
pub use server::{DnsServer, ServerOptions};
pub use stats::{DnsStats, DnsStatsSnapshot};
pub use view::{DnsView, DohUpstream, Host, Resolvers, SplitRoute, Upstream};

/// The resolver's IPv4 address (Tailscale's "Quad100").
pub const SERVICE_IPV4: Ipv4Addr = crate::control::proto::QUAD100;

/// The resolver's IPv6 address, `fd7a:115c:a1e0::53`.
pub const SERVICE_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0x53);

/// The DNS port.
pub const DNS_PORT: u16 = 53;

/// TTL of every local answer, in seconds: short, so renames and new peers show quickly.
pub const LOCAL_TTL: u32 = 5;

/// The name the resolver gives itself: PTR of [`SERVICE_IPV4`] / [`SERVICE_IPV6`], and A/AAAA
/// answers for those addresses.
pub const SERVICE_NAME: &str = "magicdns.localhost-tailgate-daemon.";

/// The addresses the daemon listens on: `100.100.100.100:53` and `[fd7a:115c:a1e0::53]:53`.
pub fn default_listen_addrs() -> Vec<SocketAddr> {
    vec![
        SocketAddr::new(IpAddr::V4(SERVICE_IPV4), DNS_PORT),
        SocketAddr::new(IpAddr::V6(SERVICE_IPV6), DNS_PORT),
    ]
}

/// Why the resolver could not start or an upstream could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// No listen address was given.
    #[error("no listen address given for the DNS resolver")]
    NoListenAddress,
    /// A socket could not be created or bound.
    #[error("DNS resolver: cannot listen on {proto} {addr}: {source}")]
    Bind {
        /// `udp` or `tcp`.
        proto: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// [`DnsServer::start`] was called outside a tokio runtime.
    #[error("DNS resolver must be started from within a tokio runtime")]
    NoRuntime,
    /// An extra root certificate for DoH upstreams is not valid PEM.
    #[error("DoH root certificate {index}: {message}")]
    BadRootCertificate {
        /// Position in [`ForwardOptions::extra_root_certs_pem`].
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// The HTTP client for DoH upstreams could not be built.
    #[error("DoH client: {0}")]
    HttpClient(String),
}
