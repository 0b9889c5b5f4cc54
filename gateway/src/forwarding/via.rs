//! 4via6 in userspace (the fallback path): an IPv6 packet from a client to a 4via6 address of
//! one of our sites becomes an IPv4 packet from the client's tailnet IPv4 address to the
//! site's LAN host (ports kept), which the kernel forwards and masquerades; replies coming back
//! from the TUN are matched against the recorded flows and turned back into IPv6.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::Ipv6Net;

use crate::device::datapath::destination;
use crate::nat::translate::{self, Addressing, FlowTuple};
use crate::nat::via6::{self, SiteId};
use crate::prefs::ViaSite;

/// Idle time after which a flow is forgotten.
const FLOW_IDLE: Duration = Duration::from_secs(300);
/// Most flows remembered; the oldest are dropped beyond this.
const MAX_FLOWS: usize = 65536;

/// Where a reply must go back to.
#[derive(Debug, Clone, Copy)]
struct ViaFlow {
    site: SiteId,
    client_v6: Ipv6Addr,
    last_seen: Instant,
}

/// Translates 4via6 traffic for the sites this router advertises.
pub struct ViaTranslator {
    prefixes: Vec<(Ipv6Net, SiteId)>,
    /// Keyed by the reply's tuple as it leaves the TUN (LAN host → client IPv4).
    flows: Mutex<HashMap<FlowTuple, ViaFlow>>,
    next_id: std::sync::atomic::AtomicU16,
}

impl ViaTranslator {
    /// A translator for `sites`; `None` when there are none.
    pub fn new(sites: &[ViaSite]) -> Option<ViaTranslator> {
        Self::new_except(sites, &[])
    }

    /// A translator for the prefixes of `sites` not in `except` (those the XDP fast path
    /// serves); `None` when none are left.
    pub fn new_except(sites: &[ViaSite], except: &[Ipv6Net]) -> Option<ViaTranslator> {
        let prefixes: Vec<(Ipv6Net, SiteId)> = sites
            .iter()
            .flat_map(|s| {
                let site = SiteId::new(s.site);
                s.routes
                    .iter()
                    .filter_map(move |r| via6::map_via(site, *r).ok().map(|p| (p, site)))
            })
            .filter(|(p, _)| !except.contains(p))
            .collect();
        (!prefixes.is_empty()).then(|| ViaTranslator {
            prefixes,
            flows: Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU16::new(1),
        })
    }

    fn flows(&self) -> std::sync::MutexGuard<'_, HashMap<FlowTuple, ViaFlow>> {
        self.flows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// If `pkt` is IPv6 to one of our 4via6 prefixes, writes its IPv4 form into `out` (source
    /// `client_v4`) and returns true. Errors mean the packet is ours but untranslatable.
    pub fn to_lan(
        &self,
        pkt: &[u8],
        client_v4: Option<Ipv4Addr>,
        out: &mut Vec<u8>,
    ) -> Result<bool, String> {
        let Some(IpAddr::V6(dst)) = destination(pkt) else {
            return Ok(false);
        };
        let Some((_, site)) = self.prefixes.iter().find(|(p, _)| p.contains(&dst)) else {
            return Ok(false);
        };
        let client_v4 = client_v4.ok_or("the client has no tailnet IPv4 address")?;
        let parsed = translate::parse(pkt).map_err(|e| e.to_string())?;
        let Addressing::Flow(flow) = parsed.addressing else {
            return Err("ICMPv6 errors toward a 4via6 address are not forwarded".into());
        };
        let IpAddr::V6(client_v6) = flow.src else {
            return Err("not an IPv6 flow".into());
        };
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let to = translate::via6_to_ipv4(pkt, (client_v4, flow.sport), id, out)
            .map_err(|e| e.to_string())?;
        let now = Instant::now();
        let mut flows = self.flows();
        if flows.len() >= MAX_FLOWS && !flows.contains_key(&to.reversed()) {
            flows.retain(|_, f| now.duration_since(f.last_seen) < FLOW_IDLE);
            if flows.len() >= MAX_FLOWS {
                if let Some(oldest) = flows
                    .iter()
                    .min_by_key(|(_, f)| f.last_seen)
                    .map(|(k, _)| *k)
                {
                    flows.remove(&oldest);
                }
            }
        }
        flows.insert(
            to.reversed(),
            ViaFlow {
                site: *site,
                client_v6,
                last_seen: now,
            },
        );
        Ok(true)
    }

    /// If `pkt` is an IPv4 reply of a translated flow, writes its IPv6 form into `out` and
    /// returns true.
    pub fn to_tailnet(&self, pkt: &[u8], out: &mut Vec<u8>) -> bool {
        if pkt.first().map(|b| b >> 4) != Some(4) || self.flows().is_empty() {
            return false;
        }
        let Ok(parsed) = translate::parse(pkt) else {
            return false;
        };
        let Addressing::Flow(t) = parsed.addressing else {
            return false;
        };
        let flow = {
            let mut flows = self.flows();
            let Some(f) = flows.get_mut(&t) else {
                return false;
            };
            f.last_seen = Instant::now();
            *f
        };
        translate::ipv4_to_via6(pkt, flow.site, (flow.client_v6, t.dport), out).is_ok()
    }

    /// Forgets flows idle for longer than the timeout.
    pub fn expire(&self, now: Instant) {
        self.flows()
            .retain(|_, f| now.duration_since(f.last_seen) < FLOW_IDLE);
    }

    /// Number of flows remembered.
    pub fn flow_count(&self) -> usize {
        self.flows().len()
    }
}

/// 4via6 prefixes translated by the XDP fast path: the data path leaves their packets alone
/// and writes them one by one (XDP cannot translate a coalesced super-packet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViaPassthrough {
    prefixes: Vec<Ipv6Net>,
}

impl ViaPassthrough {
    /// `None` when `prefixes` is empty.
    pub fn new(prefixes: &[Ipv6Net]) -> Option<ViaPassthrough> {
        (!prefixes.is_empty()).then(|| ViaPassthrough {
            prefixes: prefixes.to_vec(),
        })
    }

    /// Whether `pkt` is IPv6 to one of the prefixes.
    pub fn matches(&self, pkt: &[u8]) -> bool {
        match destination(pkt) {
            Some(IpAddr::V6(dst)) => self.prefixes.iter().any(|p| p.contains(&dst)),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ICMPv6 echo request from `src` to `dst` with a valid checksum.
    fn echo6(src: Ipv6Addr, dst: Ipv6Addr, id: u16) -> Vec<u8> {
        let mut icmp = vec![128, 0, 0, 0];
        icmp.extend_from_slice(&id.to_be_bytes());
        icmp.extend_from_slice(&[0, 1, 0xaa, 0xbb]);
        let mut p = vec![0x60, 0, 0, 0, 0, icmp.len() as u8, 58, 64];
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        let sum = crate::nat::checksum::pseudo_header_v6(
            src.octets(),
            dst.octets(),
            58,
            icmp.len() as u32,
        );
        let c = crate::nat::checksum::finish(crate::nat::checksum::sum(&icmp, sum));
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(&icmp);
        p
    }

    #[test]
    fn ping_to_a_via_address_round_trips() {
        let t = ViaTranslator::new(&[ViaSite {
            site: 7,
            routes: vec!["10.1.1.0/24".parse().unwrap()],
        }])
        .unwrap();
        let client6: Ipv6Addr = "fd7a:115c:a1e0::2".parse().unwrap();
        let via: Ipv6Addr = "fd7a:115c:a1e0:b1a:0:7:a01:105".parse().unwrap();
        let req = echo6(client6, via, 0x1234);
        let mut v4 = Vec::new();
        assert!(t
            .to_lan(&req, Some("100.64.0.2".parse().unwrap()), &mut v4)
            .unwrap());
        assert_eq!(&v4[12..16], &[100, 64, 0, 2]);
        assert_eq!(&v4[16..20], &[10, 1, 1, 5]);
        assert_eq!(v4[20], 8, "ICMP echo request");
        // The LAN host's reply (as the kernel hands it back after de-masquerading).
        let mut reply = v4.clone();
        reply[12..16].copy_from_slice(&[10, 1, 1, 5]);
        reply[16..20].copy_from_slice(&[100, 64, 0, 2]);
        reply[20] = 0;
        let l4 = crate::io::offload::headers::L4Packet::parse(&reply);
        assert!(l4.is_none(), "ICMP is not TCP/UDP");
        crate::io::offload::headers::refresh_ipv4_header_checksum(&mut reply, 20);
        reply[22..24].copy_from_slice(&[0, 0]);
        let c = crate::nat::checksum::checksum(&reply[20..]);
        reply[22..24].copy_from_slice(&c.to_be_bytes());
        let mut v6 = Vec::new();
        assert!(t.to_tailnet(&reply, &mut v6));
        assert_eq!(&v6[8..24], &via.octets());
        assert_eq!(&v6[24..40], &client6.octets());
        assert_eq!(v6[40], 129, "ICMPv6 echo reply");
        // Other IPv6 traffic and unknown IPv4 replies are left alone.
        let other = echo6(client6, "fd7a:115c:a1e0::9".parse().unwrap(), 1);
        assert!(!t
            .to_lan(&other, Some("100.64.0.2".parse().unwrap()), &mut v4)
            .unwrap());
        reply[16..20].copy_from_slice(&[100, 64, 0, 3]);
        assert!(!t.to_tailnet(&reply, &mut v6));
        assert_eq!(t.flow_count(), 1);
        t.expire(Instant::now() + FLOW_IDLE);
        assert_eq!(t.flow_count(), 0);
    }

    #[test]
    fn prefixes_served_by_xdp_are_passed_through() {
        let sites = [
            ViaSite {
                site: 7,
                routes: vec!["10.1.1.0/24".parse().unwrap()],
            },
            ViaSite {
                site: 8,
                routes: vec!["10.1.1.0/24".parse().unwrap()],
            },
        ];
        let site7: Ipv6Net = "fd7a:115c:a1e0:b1a:0:7:a01:100/120".parse().unwrap();
        let client6: Ipv6Addr = "fd7a:115c:a1e0::2".parse().unwrap();
        let to7 = echo6(
            client6,
            "fd7a:115c:a1e0:b1a:0:7:a01:105".parse().unwrap(),
            1,
        );
        let to8 = echo6(
            client6,
            "fd7a:115c:a1e0:b1a:0:8:a01:105".parse().unwrap(),
            1,
        );
        let userspace = ViaTranslator::new_except(&sites, &[site7]).unwrap();
        let mut out = Vec::new();
        let client4 = Some("100.64.0.2".parse().unwrap());
        assert!(!userspace.to_lan(&to7, client4, &mut out).unwrap());
        assert!(userspace.to_lan(&to8, client4, &mut out).unwrap());
        let xdp = ViaPassthrough::new(&[site7]).unwrap();
        assert!(xdp.matches(&to7) && !xdp.matches(&to8) && !xdp.matches(&out));
        assert!(ViaPassthrough::new(&[]).is_none());
        assert!(ViaTranslator::new_except(&sites[..1], &[site7]).is_none());
    }
}
