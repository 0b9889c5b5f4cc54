//! The NAT engine of a subnet router / exit node: [`ConnTrack`] plus [`translate`] for the
//! two directions of forwarded traffic, still I/O-free.
//!
//! * [`Nat::outbound`]: a decrypted packet from the tailnet toward the LAN. A 4via6
//!   destination is translated to IPv4 and always SNATed to the router's LAN address;
//!   other traffic is SNATed when `snat_subnet_routes` is on (the default), else left alone.
//!   ICMP errors the tailnet side sends about replies are mapped back to the LAN host.
//! * [`Nat::inbound`]: a packet from the LAN. Replies of tracked connections (and ICMP errors
//!   about them) are de-SNATed / translated back to 4via6 for the tunnel; anything else is
//!   [`Verdict::NotOurs`] and goes to the kernel untouched.
//!
//! Connections are those the tailnet side starts. The XDP programs implement the same rules.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use ipnet::Ipv6Net;

use super::conntrack::{ConnConfig, ConnError, ConnTrack};
use super::translate::{self, Addressing, FlowTuple, L4Proto, TranslateError};
use super::via6;

/// Engine settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatConfig {
    /// SNAT source for IPv4 (the router's LAN address); needed for 4via6.
    pub lan_v4: Option<Ipv4Addr>,
    /// SNAT source for IPv6; `None` forwards IPv6 unchanged.
    pub lan_v6: Option<Ipv6Addr>,
    /// `--snat-subnet-routes` (default on); 4via6 is SNATed regardless.
    pub snat_subnet_routes: bool,
    /// The 4via6 prefixes this router advertises; other 4via6 destinations are refused.
    pub via_prefixes: Vec<Ipv6Net>,
    /// Connection table settings.
    pub conntrack: ConnConfig,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            lan_v4: None,
            lan_v6: None,
            snat_subnet_routes: true,
            via_prefixes: Vec::new(),
            conntrack: ConnConfig::default(),
        }
    }
}

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward the translated packet now in `out`.
    Translated,
    /// No NAT applies: forward the packet as it is.
    Unchanged,
    /// Inbound packet that belongs to no NATed connection: hand it to the kernel.
    NotOurs,
}

/// Why a packet was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NatError {
    /// Unparseable or untranslatable packet.
    #[error(transparent)]
    Translate(#[from] TranslateError),
    /// No connection could be created.
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// A 4via6 destination this router does not serve.
    #[error("4via6 destination {0} is not in an advertised 4via6 route")]
    NotOurSite(Ipv6Addr),
    /// 4via6 or SNAT needs a LAN address of this family and none is configured.
    #[error("no LAN {0} address configured for SNAT")]
    NoLanAddress(&'static str),
}

/// SNAT and 4via6 for one router.
#[derive(Debug, Clone)]
pub struct Nat {
    cfg: NatConfig,
    ct: ConnTrack,
    next_ipv4_id: u16,
}

impl Nat {
    /// An engine with an empty connection table.
    pub fn new(cfg: NatConfig) -> Self {
        let ct = ConnTrack::new(cfg.conntrack.clone());
        Nat {
            cfg,
            ct,
            next_ipv4_id: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &NatConfig {
        &self.cfg
    }

    /// The connection table (for status and counters).
    pub fn conntrack(&self) -> &ConnTrack {
        &self.ct
    }

    /// Removes idle connections; call about once a second.
    pub fn expire(&mut self, now: Instant) -> usize {
        self.ct.expire(now)
    }

    fn ipv4_id(&mut self) -> u16 {
        self.next_ipv4_id = self.next_ipv4_id.wrapping_add(1);
        self.next_ipv4_id
    }

    /// The SNAT source for a family, if SNAT applies to it.
    fn snat_source(&self, v6: bool) -> Option<IpAddr> {
        if !self.cfg.snat_subnet_routes {
            return None;
        }
        if v6 {
            self.cfg.lan_v6.map(IpAddr::V6)
        } else {
            self.cfg.lan_v4.map(IpAddr::V4)
        }
    }

    /// For a 4via6 destination: the IPv4 target, checked against the advertised routes.
    fn via_target(&self, dst: &IpAddr) -> Result<Option<Ipv4Addr>, NatError> {
        let IpAddr::V6(d) = dst else {
            return Ok(None);
        };
        if !via6::is_via(d) {
            return Ok(None);
        }
        if !self.cfg.via_prefixes.iter().any(|p| p.contains(d)) {
            return Err(NatError::NotOurSite(*d));
        }
        let (_, target) = via6::split_via_addr(d).map_err(TranslateError::from)?;
        Ok(Some(target))
    }

    /// A packet from the tailnet toward the LAN.
    pub fn outbound(
        &mut self,
        pkt: &[u8],
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<Verdict, NatError> {
        out.clear();
        let parsed = translate::parse(pkt)?;
        match parsed.addressing {
            Addressing::Flow(t) => {
                let (snat, xlat_dst) = match self.via_target(&t.dst)? {
                    Some(target) => {
                        let lan = self.cfg.lan_v4.ok_or(NatError::NoLanAddress("IPv4"))?;
                        (IpAddr::V4(lan), IpAddr::V4(target))
                    }
                    None => match self.snat_source(t.is_v6()) {
                        Some(lan) => (lan, t.dst),
                        None => return Ok(Verdict::Unchanged),
                    },
                };
                if t.proto == L4Proto::Icmp && t.dport != 0 {
                    // An echo reply: the LAN side started that exchange.
                    return Ok(Verdict::Unchanged);
                }
                let conn = self
                    .ct
                    .outbound(&t, snat, xlat_dst, parsed.tcp_flags, now)?;
                let to = conn.translated();
                let id = self.ipv4_id();
                translate::translate(pkt, &Addressing::Flow(to), id, out)?;
                Ok(Verdict::Translated)
            }
            Addressing::IcmpError { inner, .. } => {
                // The tailnet host reports an error about a reply it got from us.
                let Some(conn) = self.ct.find_orig(&inner.reversed(), now) else {
                    return Ok(Verdict::Unchanged);
                };
                let target = Addressing::IcmpError {
                    src: conn.reply.dst,
                    dst: conn.reply.src,
                    inner: conn.reply,
                };
                let id = self.ipv4_id();
                translate::translate(pkt, &target, id, out)?;
                Ok(Verdict::Translated)
            }
        }
    }

    /// A packet from the LAN: replies of NATed connections go back toward the tunnel.
    pub fn inbound(
        &mut self,
        pkt: &[u8],
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<Verdict, NatError> {
        out.clear();
        let parsed = translate::parse(pkt)?;
        match parsed.addressing {
            Addressing::Flow(t) => {
                if t.proto == L4Proto::Icmp && t.dport == 0 {
                    return Ok(Verdict::NotOurs); // echo request from the LAN
                }
                let Some(conn) = self.ct.inbound(&t, parsed.tcp_flags, now) else {
                    return Ok(Verdict::NotOurs);
                };
                let to = conn.orig.reversed();
                translate::translate(pkt, &Addressing::Flow(to), 0, out)?;
                Ok(Verdict::Translated)
            }
            Addressing::IcmpError { src, inner, .. } => {
                // A LAN host or router reports an error about a packet we translated.
                let Some(conn) = self.ct.find_reply(&inner.reversed(), now) else {
                    return Ok(Verdict::NotOurs);
                };
                let orig: FlowTuple = conn.orig;
                let src = match (orig.dst, src) {
                    (IpAddr::V6(via), IpAddr::V4(reporter)) => {
                        // Checked when the connection was created.
                        let site = via6::unmap_via_addr(&via).map_or(u32::MAX, |(s, _)| s);
                        let site = via6::SiteId::from_u32(site).map_err(TranslateError::from)?;
                        IpAddr::V6(via6::via_addr(site, reporter))
                    }
                    _ => src,
                };
                let target = Addressing::IcmpError {
                    src,
                    dst: orig.src,
                    inner: orig,
                };
                translate::translate(pkt, &target, 0, out)?;
                Ok(Verdict::Translated)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::translate::tests::{build, Hdr, L4};
    use crate::nat::translate::{icmp4, icmp6, icmp_error, tcp_flags};
    use crate::nat::via6::SiteId;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const CLIENT6: &str = "fd7a:115c:a1e0::5";
    const CLIENT4: &str = "100.64.0.5";
    const LAN4: &str = "192.168.1.1";
    const HOST4: &str = "10.1.1.5";

    fn host_via(site: u16) -> IpAddr {
        IpAddr::V6(via6::via_addr(SiteId::new(site), HOST4.parse().unwrap()))
    }

    fn router(site: u16) -> Nat {
        let via = via6::map_via(SiteId::new(site), "10.1.1.0/24".parse().unwrap()).unwrap();
        Nat::new(NatConfig {
            lan_v4: Some(LAN4.parse().unwrap()),
            via_prefixes: vec![via],
            ..NatConfig::default()
        })
    }

    fn udp(sport: u16, dport: u16, payload: &[u8]) -> L4 {
        L4::Udp {
            sport,
            dport,
            payload: payload.to_vec(),
            no_csum: false,
        }
    }

    fn h() -> Hdr {
        Hdr::default()
    }

    #[test]
    fn via6_udp_round_trip() {
        let mut nat = router(7);
        let t0 = Instant::now();
        let q = build(ip(CLIENT6), host_via(7), &udp(40000, 53, b"query"), h());
        let mut out = Vec::new();
        assert_eq!(nat.outbound(&q, t0, &mut out).unwrap(), Verdict::Translated);
        let t = match translate::parse(&out).unwrap().addressing {
            Addressing::Flow(t) => t,
            other => panic!("{other:?}"),
        };
        assert_eq!((t.src, t.dst, t.dport), (ip(LAN4), ip(HOST4), 53));
        let id = u16::from_be_bytes([out[4], out[5]]);
        assert_eq!(
            out,
            build(
                ip(LAN4),
                ip(HOST4),
                &udp(t.sport, 53, b"query"),
                Hdr { id, ..h() }
            )
        );
        // The LAN host answers the router; the client gets it from the 4via6 address.
        let a = build(ip(HOST4), ip(LAN4), &udp(53, t.sport, b"answer"), h());
        assert_eq!(nat.inbound(&a, t0, &mut out).unwrap(), Verdict::Translated);
        assert_eq!(
            out,
            build(host_via(7), ip(CLIENT6), &udp(53, 40000, b"answer"), h())
        );
        assert_eq!(nat.conntrack().len(), 1);
        // Unrelated LAN traffic is not ours.
        let other = build(ip(HOST4), ip(LAN4), &udp(53, 9, b"x"), h());
        assert_eq!(nat.inbound(&other, t0, &mut out).unwrap(), Verdict::NotOurs);
        // Idle out.
        assert_eq!(nat.expire(t0 + Duration::from_secs(181)), 1);
        assert_eq!(nat.inbound(&a, t0, &mut out).unwrap(), Verdict::NotOurs);
    }

    #[test]
    fn via6_ping_and_errors() {
        let mut nat = router(8);
        let t0 = Instant::now();
        let echo = |request, id| L4::Echo {
            request,
            id,
            seq: 1,
            payload: b"ping".to_vec(),
        };
        let req = build(ip(CLIENT6), host_via(8), &echo(true, 0x77), h());
        let mut out = Vec::new();
        nat.outbound(&req, t0, &mut out).unwrap();
        let req4 = out.clone();
        assert_eq!(req4[20], icmp4::ECHO_REQUEST);
        let id = u16::from_be_bytes([req4[24], req4[25]]);
        let rep = build(ip(HOST4), ip(LAN4), &echo(false, id), h());
        nat.inbound(&rep, t0, &mut out).unwrap();
        assert_eq!(
            out,
            build(host_via(8), ip(CLIENT6), &echo(false, 0x77), h())
        );

        // A LAN router reports "time exceeded" about the translated request: the client gets
        // ICMPv6 from the router's 4via6 address, quoting its own request.
        let mut err = Vec::new();
        icmp_error(
            &req4,
            ip("10.1.1.254"),
            icmp4::TIME_EXCEEDED,
            0,
            [0; 4],
            &mut err,
        )
        .unwrap();
        assert_eq!(
            nat.inbound(&err, t0, &mut out).unwrap(),
            Verdict::Translated
        );
        assert_eq!(out[40], icmp6::TIME_EXCEEDED);
        let reporter = via6::via_addr(SiteId::new(8), "10.1.1.254".parse().unwrap());
        assert_eq!(&out[8..24], &reporter.octets());
        assert_eq!(&out[48..], &req[..]);

        // The client reports "port unreachable" about a UDP reply: the LAN host gets ICMP.
        let q = build(ip(CLIENT6), host_via(8), &udp(5000, 53, b"q"), h());
        nat.outbound(&q, t0, &mut out).unwrap();
        let sport = u16::from_be_bytes([out[20], out[21]]);
        let a4 = build(ip(HOST4), ip(LAN4), &udp(53, sport, b"a"), h());
        let mut a6 = Vec::new();
        nat.inbound(&a4, t0, &mut a6).unwrap();
        icmp_error(&a6, ip(CLIENT6), icmp6::DEST_UNREACH, 4, [0; 4], &mut err).unwrap();
        assert_eq!(
            nat.outbound(&err, t0, &mut out).unwrap(),
            Verdict::Translated
        );
        assert_eq!((out[20], out[21]), (icmp4::DEST_UNREACH, 3));
        assert_eq!(&out[12..16], &[192, 168, 1, 1]);
        assert_eq!(&out[16..20], &[10, 1, 1, 5]);
        assert_eq!(&out[28..], &a4[..]);
    }

    #[test]
    fn plain_snat_on_and_off() {
        let t0 = Instant::now();
        let syn = build(
            ip(CLIENT4),
            ip(HOST4),
            &L4::Tcp {
                sport: 40000,
                dport: 22,
                flags: tcp_flags::SYN,
                payload: vec![],
            },
            h(),
        );
        let mut out = Vec::new();
        let mut on = router(7);
        assert_eq!(
            on.outbound(&syn, t0, &mut out).unwrap(),
            Verdict::Translated
        );
        assert_eq!(&out[12..16], &[192, 168, 1, 1]);
        let mut off = Nat::new(NatConfig {
            snat_subnet_routes: false,
            ..router(7).config().clone()
        });
        assert_eq!(
            off.outbound(&syn, t0, &mut out).unwrap(),
            Verdict::Unchanged
        );
        assert!(out.is_empty());
        // 4via6 is SNATed even with SNAT off.
        let q = build(ip(CLIENT6), host_via(7), &udp(1, 53, b"q"), h());
        assert_eq!(off.outbound(&q, t0, &mut out).unwrap(), Verdict::Translated);
        // IPv6 without a LAN IPv6 address is forwarded unchanged.
        let v6 = build(ip(CLIENT6), ip("2001:db8::9"), &udp(1, 53, b"q"), h());
        assert_eq!(on.outbound(&v6, t0, &mut out).unwrap(), Verdict::Unchanged);
    }

    #[test]
    fn refusals() {
        let t0 = Instant::now();
        let mut nat = router(7);
        let mut out = Vec::new();
        // Site 8 is not served by this router.
        let q = build(ip(CLIENT6), host_via(8), &udp(1, 53, b"q"), h());
        assert!(matches!(
            nat.outbound(&q, t0, &mut out),
            Err(NatError::NotOurSite(_))
        ));
        // No LAN IPv4 address: 4via6 impossible.
        let mut bare = Nat::new(NatConfig {
            lan_v4: None,
            ..router(7).config().clone()
        });
        let q7 = build(ip(CLIENT6), host_via(7), &udp(1, 53, b"q"), h());
        assert_eq!(
            bare.outbound(&q7, t0, &mut out),
            Err(NatError::NoLanAddress("IPv4"))
        );
        // Garbage.
        assert!(matches!(
            nat.outbound(&[0x45, 0, 0], t0, &mut out),
            Err(NatError::Translate(_))
        ));
        // Echo requests from the LAN are not NATed traffic.
        let ping = build(
            ip(HOST4),
            ip(LAN4),
            &L4::Echo {
                request: true,
                id: 61000,
                seq: 1,
                payload: vec![],
            },
            h(),
        );
        assert_eq!(nat.inbound(&ping, t0, &mut out).unwrap(), Verdict::NotOurs);
    }
}
