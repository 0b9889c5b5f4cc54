//! What the resolver knows: the tailnet domain, the node and its peers with their addresses,
//! split-DNS routes and global nameservers. The daemon builds a [`DnsView`] from every netmap
//! (or from the static config) and sends it to the resolver.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::PeerConfig;
use crate::control::proto::{sanitize_hostname, NetMap, NodeView};

/// Everything the resolver answers from and forwards to. Cheap to compare, so the daemon can
/// skip sending an unchanged view.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsView {
    /// The tailnet domain without trailing dot (`tailnet.example`); names are
    /// `<host>.<domain>`. Empty: no tailnet zone (hosts still answer as single labels).
    pub domain: String,
    /// The node itself.
    pub self_node: Option<Host>,
    /// The peers.
    pub peers: Vec<Host>,
    /// Split-DNS routes: queries under a suffix go to its nameservers (most specific wins).
    pub split: Vec<SplitRoute>,
    /// Nameservers for every other name.
    pub global: Vec<Upstream>,
}

/// A named node (the node itself or a peer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// A single DNS label (`laptop`); matched case-insensitively. A name that ends with the
    /// tailnet domain (`laptop.tailnet.example`) is accepted and shortened.
    pub name: String,
    /// Its addresses: A and AAAA answers, and PTR for each.
    pub addrs: Vec<IpAddr>,
}

impl Host {
    /// A host from a netmap node: its name and tailnet addresses.
    pub fn from_node(node: &NodeView) -> Host {
        Host {
            name: node.name.clone(),
            addrs: node.addresses.iter().map(|a| a.addr()).collect(),
        }
    }
}

/// Queries at or under `suffix` go to `upstreams`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitRoute {
    /// A domain (`internal.company.com`, trailing dot optional); `.` matches every name.
    pub suffix: String,
    /// Tried in order, staggered; an empty list makes matching queries fail (SERVFAIL) rather
    /// than fall back to the global nameservers.
    pub upstreams: Vec<Upstream>,
}

/// Upstream configuration that does not come from the netmap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolvers {
    /// Split-DNS routes.
    pub split: Vec<SplitRoute>,
    /// Global nameservers.
    pub global: Vec<Upstream>,
}

/// A nameserver the resolver forwards to.
///
/// Text form (config, CLI, serde): `10.0.0.53`, `10.0.0.53:5353`, `fd00::53`, `[fd00::53]:53`
/// for classic DNS; `https://dns.example/dns-query` for DNS over HTTPS, optionally with
/// bootstrap addresses for the server's host name after `#`:
/// `https://dns.example/dns-query#192.0.2.1,2001:db8::1`. `http://` URLs are accepted for
/// local DoH servers (the traffic is then not encrypted).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Upstream {
    /// Classic DNS: UDP, retried over TCP when the answer is truncated.
    Dns(SocketAddr),
    /// DNS over HTTPS (RFC 8484).
    Doh(DohUpstream),
}

/// A DNS-over-HTTPS server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DohUpstream {
    url: reqwest::Url,
    bootstrap: Vec<IpAddr>,
}

impl DohUpstream {
    /// A DoH server at `url` (`https://…` or `http://…`, no fragment), reached at `bootstrap`
    /// instead of resolving its host name when that list is not empty.
    pub fn new(url: &str, bootstrap: Vec<IpAddr>) -> Result<DohUpstream, UpstreamError> {
        let bad = |why: &str| UpstreamError(format!("DoH URL {url:?}: {why}"));
        let url = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(bad("want an https:// (or http://) URL"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        if url.fragment().is_some() {
            return Err(bad("unexpected fragment"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("credentials in the URL are not supported"));
        }
        Ok(DohUpstream { url, bootstrap })
    }

    /// The URL queries are posted to.
    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// Addresses used instead of resolving the URL's host name (empty: resolve it).
    pub fn bootstrap(&self) -> &[IpAddr] {
        &self.bootstrap
    }
}

/// A nameserver string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid nameserver: {0}")]
pub struct UpstreamError(String);

impl FromStr for Upstream {
    type Err = UpstreamError;

    fn from_str(s: &str) -> Result<Self, UpstreamError> {
        let s = s.trim();
        if s.contains("://") {
            let (url, bootstrap) = match s.split_once('#') {
                Some((url, list)) => {
                    let addrs = list
                        .split(',')
                        .map(|a| {
                            a.trim().parse::<IpAddr>().map_err(|_| {
                                UpstreamError(format!(
                                    "{s:?}: bootstrap address {a:?} is not an IP address"
                                ))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    (url, addrs)
                }
                None => (s, Vec::new()),
            };
            return DohUpstream::new(url, bootstrap).map(Upstream::Doh);
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Upstream::Dns(SocketAddr::new(ip, super::DNS_PORT)));
        }
        s.parse::<SocketAddr>().map(Upstream::Dns).map_err(|_| {
            UpstreamError(format!(
                "{s:?}: want an IP address, IP:port, [IPv6]:port or an https:// DoH URL"
            ))
        })
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Dns(addr) => addr.fmt(f),
            Upstream::Doh(doh) => doh.fmt(f),
        }
    }
}

impl fmt::Display for DohUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url.as_str())?;
        for (i, ip) in self.bootstrap.iter().enumerate() {
            f.write_str(if i == 0 { "#" } else { "," })?;
            ip.fmt(f)?;
        }
        Ok(())
    }
}

impl TryFrom<String> for Upstream {
    type Error = UpstreamError;

    fn try_from(s: String) -> Result<Self, UpstreamError> {
        s.parse()
    }
}

impl From<Upstream> for String {
    fn from(u: Upstream) -> String {
        u.to_string()
    }
}

impl DnsView {
    /// The view for a netmap: the tailnet domain, the node and every peer with its tailnet
    /// addresses, plus the configured nameservers.
    pub fn from_netmap(nm: &NetMap, resolvers: &Resolvers) -> DnsView {
        DnsView {
            domain: nm.dns.domain.clone(),
            self_node: Some(Host::from_node(&nm.self_node)),
            peers: nm.peers.iter().map(Host::from_node).collect(),
            split: resolvers.split.clone(),
            global: resolvers.global.clone(),
        }
    }

    /// The view for a static-peer configuration: every peer with a `name` answers with its
    /// single-address allowed IPs (`/32` and `/128`; subnet routes are not names). Names are
    /// made DNS labels the way the coordination server does (`My Laptop` → `my-laptop`).
    pub fn from_static_peers(
        domain: &str,
        self_name: Option<&str>,
        self_addrs: &[IpAddr],
        peers: &[PeerConfig],
        resolvers: &Resolvers,
    ) -> DnsView {
        let self_node = self_name.map(|n| Host {
            name: sanitize_hostname(n),
            addrs: self_addrs.to_vec(),
        });
        let peers = peers
            .iter()
            .filter_map(|p| {
                let name = p.name.as_deref()?;
                Some(Host {
                    name: sanitize_hostname(name),
                    addrs: p
                        .allowed_ips
                        .iter()
                        .filter(|n| n.prefix_len() == n.max_prefix_len())
                        .map(|n| n.addr())
                        .collect(),
                })
            })
            .collect();
        DnsView {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            self_node,
            peers,
            split: resolvers.split.clone(),
            global: resolvers.global.clone(),
        }
    }

    /// Every named host: the node itself first, then the peers.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.self_node.iter().chain(self.peers.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::proto::{DnsConfig, NetMap, NodeView};
    use crate::wg::Key;
    use ipnet::IpNet;

    fn node(id: u64, name: &str, addrs: &[&str]) -> NodeView {
        NodeView::for_tests(id, name, addrs)
    }

    #[test]
    fn view_from_netmap() {
        let nm = NetMap {
            version: 3,
            self_node: node(1, "gw", &["100.64.0.1/32", "fd7a:115c:a1e0::1/128"]),
            peers: vec![
                node(2, "laptop", &["100.64.0.2/32", "fd7a:115c:a1e0::2/128"]),
                node(3, "nas", &["100.64.0.3/32"]),
            ],
            dns: DnsConfig {
                domain: "tailnet.example".into(),
            },
            keepalive_interval_ms: 1000,
            packet_filter: None,
            relay_map: None,
        };
        let resolvers = Resolvers {
            split: vec![SplitRoute {
                suffix: "corp.example".into(),
                upstreams: vec!["10.0.0.53".parse().unwrap()],
            }],
            global: vec!["192.0.2.53".parse().unwrap()],
        };
        let v = DnsView::from_netmap(&nm, &resolvers);
        assert_eq!(v.domain, "tailnet.example");
        let me = v.self_node.as_ref().unwrap();
        assert_eq!(me.name, "gw");
        assert_eq!(
            me.addrs,
            vec![
                "100.64.0.1".parse::<IpAddr>().unwrap(),
                "fd7a:115c:a1e0::1".parse().unwrap()
            ]
        );
        assert_eq!(v.peers.len(), 2);
        assert_eq!(v.peers[1].name, "nas");
        assert_eq!(
            v.peers[1].addrs,
            vec!["100.64.0.3".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(v.split, resolvers.split);
        assert_eq!(v.global, resolvers.global);
        assert_eq!(
            v.hosts().map(|h| h.name.as_str()).collect::<Vec<_>>(),
            ["gw", "laptop", "nas"]
        );
    }

    #[test]
    fn view_from_static_peers() {
        let peer = |name: Option<&str>, ips: &[&str]| PeerConfig {
            public_key: Key::from([7; 32]),
            preshared_key: None,
            endpoint: None,
            allowed_ips: ips.iter().map(|a| a.parse::<IpNet>().unwrap()).collect(),
            persistent_keepalive: None,
            name: name.map(str::to_string),
            routes: vec![],
            exit_node: false,
        };
        let peers = [
            peer(
                Some("Office Router"),
                &["10.0.0.2/32", "192.168.1.0/24", "fd00::2/128"],
            ),
            peer(None, &["10.0.0.3/32"]),
        ];
        let v = DnsView::from_static_peers(
            "Lab.Example.",
            Some("gw"),
            &["10.0.0.1".parse().unwrap()],
            &peers,
            &Resolvers::default(),
        );
        assert_eq!(v.domain, "lab.example");
        assert_eq!(v.self_node.as_ref().unwrap().name, "gw");
        assert_eq!(v.peers.len(), 1, "unnamed peers have no DNS name");
        assert_eq!(v.peers[0].name, "office-router");
        assert_eq!(
            v.peers[0].addrs,
            vec![
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "fd00::2".parse().unwrap()
            ]
        );
    }

    #[test]
    fn upstream_text_forms() {
        let dns: Upstream = "10.0.0.53".parse().unwrap();
        assert_eq!(dns, Upstream::Dns("10.0.0.53:53".parse().unwrap()));
        assert_eq!(
            "[fd00::53]:5353".parse::<Upstream>().unwrap().to_string(),
            "[fd00::53]:5353"
        );
        assert_eq!(
            "fd00::53".parse::<Upstream>().unwrap(),
            Upstream::Dns("[fd00::53]:53".parse().unwrap())
        );
        let doh: Upstream = "https://dns.example/dns-query#192.0.2.1,2001:db8::1"
            .parse()
            .unwrap();
        match &doh {
            Upstream::Doh(d) => {
                assert_eq!(d.url().as_str(), "https://dns.example/dns-query");
                assert_eq!(d.bootstrap().len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            doh.to_string(),
            "https://dns.example/dns-query#192.0.2.1,2001:db8::1"
        );
        assert!("http://127.0.0.1:8053/dns-query"
            .parse::<Upstream>()
            .is_ok());
        for bad in [
            "",
            "dns.example",
            "ftp://dns.example/",
            "https://dns.example/q#notanip",
            "https://user:pw@dns.example/q",
            "10.0.0.300",
        ] {
            assert!(bad.parse::<Upstream>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&vec![dns.clone(), doh.clone()]).unwrap();
        let back: Vec<Upstream> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, vec![dns, doh]);
    }
}
