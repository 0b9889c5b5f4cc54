//! Tests for `translate`: known answers, round trips, ICMP errors, malformed input and fuzzing.

use super::*;
use crate::nat::checksum as ck;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Packet builders (full checksums, independent of the code under test).

#[derive(Clone, Debug)]
pub(crate) enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        payload: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
        no_csum: bool,
    },
    Echo {
        request: bool,
        id: u16,
        seq: u16,
        payload: Vec<u8>,
    },
    Raw {
        proto: u8,
        bytes: Vec<u8>,
    },
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Hdr {
    pub tos: u8,
    pub ttl: u8,
    pub id: u16,
    pub df: bool,
}

impl Default for Hdr {
    fn default() -> Self {
        Hdr {
            tos: 0,
            ttl: 64,
            id: 0,
            df: false,
        }
    }
}

fn pseudo(src: &IpAddr, dst: &IpAddr, proto: u8, len: usize) -> u64 {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            ck::pseudo_header_v4(s.octets(), d.octets(), proto, len as u16)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            ck::pseudo_header_v6(s.octets(), d.octets(), proto, len as u32)
        }
        _ => panic!("mixed families"),
    }
}

pub(crate) fn l4_bytes(src: &IpAddr, dst: &IpAddr, l4: &L4) -> (u8, Vec<u8>) {
    let v6 = src.is_ipv6();
    match l4 {
        L4::Tcp {
            sport,
            dport,
            flags,
            payload,
        } => {
            let mut b = Vec::new();
            b.extend_from_slice(&sport.to_be_bytes());
            b.extend_from_slice(&dport.to_be_bytes());
            b.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 0x50, *flags, 0xff, 0xff, 0, 0, 0, 0]);
            b.extend_from_slice(payload);
            let c = ck::finish(ck::sum(&b, pseudo(src, dst, IPPROTO_TCP, b.len())));
            b[16..18].copy_from_slice(&c.to_be_bytes());
            (IPPROTO_TCP, b)
        }
        L4::Udp {
            sport,
            dport,
            payload,
            no_csum,
        } => {
            let mut b = Vec::new();
            b.extend_from_slice(&sport.to_be_bytes());
            b.extend_from_slice(&dport.to_be_bytes());
            b.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            b.extend_from_slice(&[0, 0]);
            b.extend_from_slice(payload);
            if !no_csum {
                let c = ck::udp_wire(ck::finish(ck::sum(
                    &b,
                    pseudo(src, dst, IPPROTO_UDP, b.len()),
                )));
                b[6..8].copy_from_slice(&c.to_be_bytes());
            }
            (IPPROTO_UDP, b)
        }
        L4::Echo {
            request,
            id,
            seq,
            payload,
        } => {
            let typ = match (v6, request) {
                (false, true) => icmp4::ECHO_REQUEST,
                (false, false) => icmp4::ECHO_REPLY,
                (true, true) => icmp6::ECHO_REQUEST,
                (true, false) => icmp6::ECHO_REPLY,
            };
            let mut b = vec![typ, 0, 0, 0];
            b.extend_from_slice(&id.to_be_bytes());
            b.extend_from_slice(&seq.to_be_bytes());
            b.extend_from_slice(payload);
            let proto = if v6 { IPPROTO_ICMPV6 } else { IPPROTO_ICMP };
            let p = if v6 {
                pseudo(src, dst, proto, b.len())
            } else {
                0
            };
            let c = ck::finish(ck::sum(&b, p));
            b[2..4].copy_from_slice(&c.to_be_bytes());
            (proto, b)
        }
        L4::Raw { proto, bytes } => (*proto, bytes.clone()),
    }
}

pub(crate) fn ip_packet(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8], h: Hdr) -> Vec<u8> {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = (20 + l4.len()) as u16;
            let flags: u16 = if h.df { 0x4000 } else { 0 };
            p.extend_from_slice(&[0x45, h.tos]);
            p.extend_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&h.id.to_be_bytes());
            p.extend_from_slice(&flags.to_be_bytes());
            p.extend_from_slice(&[h.ttl, proto, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            let c = ck::checksum(&p);
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&[0x60 | (h.tos >> 4), h.tos << 4, 0, 0]);
            p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            p.extend_from_slice(&[proto, h.ttl]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed families"),
    }
    p.extend_from_slice(l4);
    p
}

pub(crate) fn build(src: IpAddr, dst: IpAddr, l4: &L4, h: Hdr) -> Vec<u8> {
    let (proto, b) = l4_bytes(&src, &dst, l4);
    ip_packet(src, dst, proto, &b, h)
}

/// Asserts every checksum in `pkt` verifies (and those of a quoted IPv4 header).
pub(crate) fn assert_valid(pkt: &[u8]) {
    let ip = parse_ip(pkt, false).expect("parse");
    if !ip.v6 {
        assert!(ck::verify(&pkt[..ip.hdr_len], 0), "IPv4 header checksum");
    }
    let l4 = &pkt[ip.hdr_len..ip.len];
    let p = pseudo(&ip.src, &ip.dst, ip.proto, l4.len());
    match ip.proto {
        IPPROTO_TCP => assert!(ck::verify(l4, p), "TCP checksum"),
        IPPROTO_UDP => {
            let c = u16::from_be_bytes([l4[6], l4[7]]);
            assert!(c == 0 && !ip.v6 || ck::verify(l4, p), "UDP checksum");
        }
        IPPROTO_ICMP => assert!(ck::verify(l4, 0), "ICMP checksum"),
        IPPROTO_ICMPV6 => assert!(ck::verify(l4, p), "ICMPv6 checksum"),
        _ => {}
    }
    if is_icmp(ip.proto) {
        if let Ok(L4Kind::Error { .. }) = parse_l4(&ip, l4, false) {
            let q = &l4[8..];
            if q[0] >> 4 == 4 {
                let ihl = usize::from(q[0] & 15) * 4;
                assert!(ck::verify(&q[..ihl], 0), "quoted IPv4 header checksum");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures: a tailnet client, a router with a LAN address, a LAN host behind site 7.

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const CLIENT6: &str = "fd7a:115c:a1e0::5";
const CLIENT4: &str = "100.64.0.5";
const ROUTER_LAN4: &str = "192.168.1.1";
const HOST4: &str = "10.1.1.5";

fn host_via() -> IpAddr {
    IpAddr::V6(via6::via_addr(SiteId::new(7), HOST4.parse().unwrap()))
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> L4 {
    L4::Udp {
        sport,
        dport,
        payload: payload.to_vec(),
        no_csum: false,
    }
}

fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
        payload: payload.to_vec(),
    }
}

fn echo(request: bool, id: u16, payload: &[u8]) -> L4 {
    L4::Echo {
        request,
        id,
        seq: 9,
        payload: payload.to_vec(),
    }
}

fn hdr(tos: u8, ttl: u8) -> Hdr {
    Hdr {
        tos,
        ttl,
        ..Hdr::default()
    }
}

fn flow(p: &[u8]) -> FlowTuple {
    match parse(p).unwrap().addressing {
        Addressing::Flow(t) => t,
        other => panic!("not a flow: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Known answers.

#[test]
fn via6_to_ipv4_known_answers() {
    let h = hdr(0x28, 63);
    for (l4_in, l4_out) in [
        (udp(40000, 53, b"hello"), udp(61000, 53, b"hello")),
        (
            tcp(40000, 443, tcp_flags::SYN, b""),
            tcp(61000, 443, tcp_flags::SYN, b""),
        ),
        (
            tcp(40000, 443, tcp_flags::ACK, &[7; 333]),
            tcp(61000, 443, tcp_flags::ACK, &[7; 333]),
        ),
        (echo(true, 0x4242, b"ping"), echo(true, 61000, b"ping")),
    ] {
        let orig = build(ip(CLIENT6), host_via(), &l4_in, h);
        let mut out = Vec::new();
        let t = via6_to_ipv4(
            &orig,
            (ROUTER_LAN4.parse().unwrap(), 61000),
            0x1234,
            &mut out,
        )
        .unwrap();
        let want = build(ip(ROUTER_LAN4), ip(HOST4), &l4_out, Hdr { id: 0x1234, ..h });
        assert_eq!(out, want, "{l4_in:?}");
        assert_eq!(flow(&out), t);
        assert_valid(&out);
    }
}

#[test]
fn ipv4_to_via6_known_answers() {
    let h = hdr(0x10, 60);
    for (l4_in, l4_out) in [
        (udp(53, 61000, b"world"), udp(53, 40000, b"world")),
        (
            tcp(443, 61000, tcp_flags::SYN | tcp_flags::ACK, b""),
            tcp(443, 40000, 0x12, b""),
        ),
        (echo(false, 61000, b"pong"), echo(false, 0x4242, b"pong")),
    ] {
        let reply = build(ip(HOST4), ip(ROUTER_LAN4), &l4_in, Hdr { id: 777, ..h });
        let mut out = Vec::new();
        let orig_port = if matches!(l4_in, L4::Echo { .. }) {
            0x4242
        } else {
            40000
        };
        let t = ipv4_to_via6(
            &reply,
            SiteId::new(7),
            (CLIENT6.parse().unwrap(), orig_port),
            &mut out,
        )
        .unwrap();
        let want = build(host_via(), ip(CLIENT6), &l4_out, h);
        assert_eq!(out, want, "{l4_in:?}");
        assert_eq!(flow(&out), t);
        assert_valid(&out);
    }
}

#[test]
fn snat_and_desnat_ipv4() {
    let orig = build(
        ip(CLIENT4),
        ip(HOST4),
        &tcp(40000, 22, tcp_flags::SYN, b"x"),
        hdr(0, 64),
    );
    let mut p = orig.clone();
    let t = snat_in_place(&mut p, ip(ROUTER_LAN4), 61001).unwrap();
    assert_eq!(
        p,
        build(
            ip(ROUTER_LAN4),
            ip(HOST4),
            &tcp(61001, 22, tcp_flags::SYN, b"x"),
            hdr(0, 64)
        )
    );
    assert_eq!(flow(&p), t);
    // The reply, de-SNATed, goes back to the client.
    let mut r = build(
        ip(HOST4),
        ip(ROUTER_LAN4),
        &tcp(22, 61001, 0x12, b""),
        hdr(0, 61),
    );
    desnat_in_place(&mut r, ip(CLIENT4), 40000).unwrap();
    assert_eq!(
        r,
        build(
            ip(HOST4),
            ip(CLIENT4),
            &tcp(22, 40000, 0x12, b""),
            hdr(0, 61)
        )
    );
    // Rewriting back to the original addressing restores the original bytes.
    rewrite_in_place(&mut p, &Addressing::Flow(flow(&orig))).unwrap();
    assert_eq!(p, orig);
}

#[test]
fn snat_ipv6_and_echo() {
    let lan6 = ip("2001:db8:1::1");
    let host6 = ip("2001:db8:1::99");
    let orig = build(ip(CLIENT6), host6, &echo(true, 5, b"abc"), hdr(0, 64));
    let mut p = orig.clone();
    snat_in_place(&mut p, lan6, 62000).unwrap();
    assert_eq!(
        p,
        build(lan6, host6, &echo(true, 62000, b"abc"), hdr(0, 64))
    );
    let mut r = build(host6, lan6, &echo(false, 62000, b"abc"), hdr(0, 64));
    desnat_in_place(&mut r, ip(CLIENT6), 5).unwrap();
    assert_eq!(
        r,
        build(host6, ip(CLIENT6), &echo(false, 5, b"abc"), hdr(0, 64))
    );
}

#[test]
fn udp_without_checksum() {
    let l4 = L4::Udp {
        sport: 1,
        dport: 2,
        payload: b"abc".to_vec(),
        no_csum: true,
    };
    let orig = build(ip(HOST4), ip(ROUTER_LAN4), &l4, hdr(0, 64));
    // IPv4 → IPv4 keeps "no checksum".
    let mut p = orig.clone();
    snat_in_place(&mut p, ip("192.168.1.2"), 3).unwrap();
    assert_eq!(&p[26..28], &[0, 0]);
    // IPv4 → IPv6 must compute one.
    let mut out = Vec::new();
    ipv4_to_via6(
        &orig,
        SiteId::new(7),
        (CLIENT6.parse().unwrap(), 9),
        &mut out,
    )
    .unwrap();
    assert_valid(&out);
    assert_eq!(
        out,
        build(
            IpAddr::V6(via6::via_addr(SiteId::new(7), HOST4.parse().unwrap())),
            ip(CLIENT6),
            &udp(1, 9, b"abc"),
            hdr(0, 64)
        )
    );
}

#[test]
fn df_follows_rfc7915() {
    let big = build(ip(CLIENT6), host_via(), &udp(1, 2, &[0; 1232]), hdr(0, 64));
    assert_eq!(big.len(), 1280);
    let mut out = Vec::new();
    via6_to_ipv4(&big, (ROUTER_LAN4.parse().unwrap(), 3), 1, &mut out).unwrap();
    assert_eq!(out.len(), DF_THRESHOLD);
    assert_eq!(out[6] & 0x40, 0, "1260 bytes: DF clear");
    let bigger = build(ip(CLIENT6), host_via(), &udp(1, 2, &[0; 1300]), hdr(0, 64));
    via6_to_ipv4(&bigger, (ROUTER_LAN4.parse().unwrap(), 3), 1, &mut out).unwrap();
    assert_eq!(out[6] & 0x40, 0x40, "above 1260 bytes: DF set");
}

#[test]
fn parse_reports_flags_length_and_ignores_padding() {
    let mut p = build(
        ip(CLIENT4),
        ip(HOST4),
        &tcp(1, 2, tcp_flags::SYN | tcp_flags::ACK, b""),
        hdr(0, 64),
    );
    let len = p.len();
    p.extend_from_slice(&[0xee; 6]); // link-layer padding
    let parsed = parse(&p).unwrap();
    assert_eq!(parsed.tcp_flags, 0x12);
    assert_eq!(parsed.len, len);
    snat_in_place(&mut p, ip(ROUTER_LAN4), 5).unwrap();
    assert_eq!(&p[len..], &[0xee; 6]);
    assert_valid(&p[..len]);
}

// ---------------------------------------------------------------------------------------------
// ICMP errors.

/// The packets of one 4via6 UDP flow: client's original, translated, reply, translated reply.
fn via_flow() -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
    let orig = build(
        ip(CLIENT6),
        host_via(),
        &udp(40000, 53, &[1; 100]),
        hdr(0, 64),
    );
    let mut out4 = Vec::new();
    via6_to_ipv4(&orig, (ROUTER_LAN4.parse().unwrap(), 61000), 0, &mut out4).unwrap();
    let reply4 = build(
        ip(HOST4),
        ip(ROUTER_LAN4),
        &udp(53, 61000, &[2; 50]),
        hdr(0, 64),
    );
    let mut reply6 = Vec::new();
    ipv4_to_via6(
        &reply4,
        SiteId::new(7),
        (CLIENT6.parse().unwrap(), 40000),
        &mut reply6,
    )
    .unwrap();
    (orig, out4, reply4, reply6)
}

#[test]
fn icmpv4_errors_from_lan_become_icmpv6() {
    let (orig, out4, _, _) = via_flow();
    let router = ip("10.1.1.254");
    for (typ, code, rest, want_typ, want_code, want_rest) in [
        (3u8, 3u8, [0u8; 4], icmp6::DEST_UNREACH, 4u8, [0u8; 4]),
        (3, 1, [0; 4], icmp6::DEST_UNREACH, 0, [0; 4]),
        (3, 13, [0; 4], icmp6::DEST_UNREACH, 1, [0; 4]),
        (
            3,
            4,
            [0, 0, 0x05, 0x78],
            icmp6::PACKET_TOO_BIG,
            0,
            1420u32.to_be_bytes(),
        ),
        (3, 2, [0; 4], icmp6::PARAM_PROBLEM, 1, 6u32.to_be_bytes()),
        (11, 0, [0; 4], icmp6::TIME_EXCEEDED, 0, [0; 4]),
    ] {
        let mut err4 = Vec::new();
        icmp_error(&out4, router, typ, code, rest, &mut err4).unwrap();
        assert_valid(&err4);
        let router_via = IpAddr::V6(via6::via_addr(
            SiteId::new(7),
            "10.1.1.254".parse().unwrap(),
        ));
        let target = Addressing::IcmpError {
            src: router_via,
            dst: ip(CLIENT6),
            inner: flow(&orig),
        };
        let mut err6 = Vec::new();
        translate(&err4, &target, 0, &mut err6).unwrap();
        assert_valid(&err6);
        assert_eq!(parse(&err6).unwrap().addressing, target);
        assert_eq!(&err6[40..44], &[want_typ, want_code, err6[42], err6[43]]);
        assert_eq!(&err6[44..48], &want_rest, "type {typ} code {code}");
        // The quote is the client's original packet, byte for byte.
        assert_eq!(&err6[48..], &orig[..]);
    }
}

#[test]
fn icmpv6_errors_from_client_become_icmpv4() {
    let (_, _, reply4, reply6) = via_flow();
    for (typ, code, rest, want_typ, want_code, want_rest) in [
        (icmp6::DEST_UNREACH, 4u8, [0u8; 4], 3u8, 3u8, [0u8; 4]),
        (icmp6::DEST_UNREACH, 1, [0; 4], 3, 10, [0; 4]),
        (
            icmp6::PACKET_TOO_BIG,
            0,
            1280u32.to_be_bytes(),
            3,
            4,
            [0, 0, 0x04, 0xec],
        ),
        (icmp6::TIME_EXCEEDED, 1, [0; 4], 11, 1, [0; 4]),
        (icmp6::PARAM_PROBLEM, 1, [0, 0, 0, 6], 3, 2, [0; 4]),
    ] {
        let mut err6 = Vec::new();
        icmp_error(&reply6, ip(CLIENT6), typ, code, rest, &mut err6).unwrap();
        assert_valid(&err6);
        let target = Addressing::IcmpError {
            src: ip(ROUTER_LAN4),
            dst: ip(HOST4),
            inner: flow(&reply4),
        };
        let mut err4 = Vec::new();
        translate(&err6, &target, 99, &mut err4).unwrap();
        assert_valid(&err4);
        assert_eq!(parse(&err4).unwrap().addressing, target);
        assert_eq!((err4[20], err4[21]), (want_typ, want_code));
        assert_eq!(&err4[24..28], &want_rest);
        // The quote is the LAN host's reply (with identification 0, as translated).
        assert_eq!(&err4[28..], &reply4[..]);
    }
}

#[test]
fn icmp_error_same_family_desnat() {
    let orig = build(ip(CLIENT4), ip(HOST4), &udp(40000, 53, b"q"), hdr(0, 64));
    let mut snatted = orig.clone();
    snat_in_place(&mut snatted, ip(ROUTER_LAN4), 61000).unwrap();
    let mut err = Vec::new();
    icmp_error(&snatted, ip(HOST4), 3, 3, [0; 4], &mut err).unwrap();
    let target = Addressing::IcmpError {
        src: ip(HOST4),
        dst: ip(CLIENT4),
        inner: flow(&orig),
    };
    let mut back = Vec::new();
    translate(&err, &target, 0, &mut back).unwrap();
    assert_valid(&back);
    assert_eq!(parse(&back).unwrap().addressing, target);
    assert_eq!(&back[28..], &orig[..]);
    // In place gives the same bytes.
    rewrite_in_place(&mut err, &target).unwrap();
    assert_eq!(err, back);
}

#[test]
fn icmp_error_quotes_are_truncated_and_errors_not_answered() {
    let big6 = build(ip(CLIENT6), host_via(), &udp(1, 2, &[3; 1200]), hdr(0, 64));
    let mut e = Vec::new();
    icmp_error(
        &big6,
        ip("fd7a:115c:a1e0::1"),
        icmp6::TIME_EXCEEDED,
        0,
        [0; 4],
        &mut e,
    )
    .unwrap();
    assert_eq!(e.len(), ICMPV6_ERROR_MAX);
    assert_valid(&e);
    let mut e2 = Vec::new();
    assert!(icmp_error(&e, ip("fd7a:115c:a1e0::1"), 3, 0, [0; 4], &mut e2).is_err());
    let big4 = build(ip(CLIENT4), ip(HOST4), &udp(1, 2, &[3; 1000]), hdr(0, 64));
    icmp_error(&big4, ip(ROUTER_LAN4), 3, 4, [0, 0, 5, 0], &mut e).unwrap();
    assert_eq!(e.len(), ICMPV4_ERROR_MAX);
    assert_valid(&e);
    // A 4 → 6 translated error grows by 40 bytes and is cut back to 1280. Build a full-quote
    // ICMPv4 error by hand: 20 + 8 + 1428 bytes.
    let big4 = build(
        ip(HOST4),
        ip(ROUTER_LAN4),
        &udp(1, 2, &[3; 1400]),
        hdr(0, 64),
    );
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&big4);
    let c = ck::checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let full = ip_packet(ip(HOST4), ip(ROUTER_LAN4), IPPROTO_ICMP, &icmp, hdr(0, 64));
    let target = Addressing::IcmpError {
        src: host_via(),
        dst: ip(CLIENT6),
        inner: FlowTuple {
            proto: L4Proto::Udp,
            src: host_via(),
            sport: 1,
            dst: ip(CLIENT6),
            dport: 2,
        },
    };
    let mut out = Vec::new();
    translate(&full, &target, 0, &mut out).unwrap();
    assert_eq!(out.len(), ICMPV6_ERROR_MAX);
    assert_valid(&out);
}

// ---------------------------------------------------------------------------------------------
// Refusals.

#[test]
fn refused_packets() {
    let mut out = Vec::new();
    let lan = (ROUTER_LAN4.parse().unwrap(), 1);
    // Not a 4via6 destination / forbidden target / reserved site.
    let p = build(ip(CLIENT6), ip("fd00::1"), &udp(1, 2, b""), hdr(0, 64));
    assert!(matches!(
        via6_to_ipv4(&p, lan, 0, &mut out),
        Err(TranslateError::Via(ViaError::NotVia(_)))
    ));
    let lo = IpAddr::V6(via6::via_addr(SiteId::new(7), "127.0.0.1".parse().unwrap()));
    let p = build(ip(CLIENT6), lo, &udp(1, 2, b""), hdr(0, 64));
    assert!(matches!(
        via6_to_ipv4(&p, lan, 0, &mut out),
        Err(TranslateError::Via(ViaError::ForbiddenTarget { .. }))
    ));
    let reserved: IpAddr = "fd7a:115c:a1e0:b1a:1:0:a01:105".parse().unwrap();
    let p = build(ip(CLIENT6), reserved, &udp(1, 2, b""), hdr(0, 64));
    assert!(matches!(
        via6_to_ipv4(&p, lan, 0, &mut out),
        Err(TranslateError::Via(ViaError::ReservedSiteId(65536)))
    ));
    assert!(out.is_empty());
    // Unsupported protocols, ICMP types and extension headers.
    let sctp = build(
        ip(CLIENT4),
        ip(HOST4),
        &L4::Raw {
            proto: 132,
            bytes: vec![0; 12],
        },
        hdr(0, 64),
    );
    assert_eq!(parse(&sctp), Err(TranslateError::UnsupportedProtocol(132)));
    let hbh = build(
        ip(CLIENT6),
        host_via(),
        &L4::Raw {
            proto: 0,
            bytes: vec![0; 16],
        },
        hdr(0, 64),
    );
    assert_eq!(parse(&hbh), Err(TranslateError::UnsupportedProtocol(0)));
    let frag6 = build(
        ip(CLIENT6),
        host_via(),
        &L4::Raw {
            proto: 44,
            bytes: vec![0; 16],
        },
        hdr(0, 64),
    );
    assert_eq!(parse(&frag6), Err(TranslateError::Fragment));
    let mut ns = vec![135, 0, 0, 0, 0, 0, 0, 0];
    ns.extend_from_slice(&[0; 16]);
    let ndp = build(
        ip(CLIENT6),
        host_via(),
        &L4::Raw {
            proto: 58,
            bytes: ns,
        },
        hdr(0, 64),
    );
    assert_eq!(parse(&ndp), Err(TranslateError::UnsupportedIcmp(135, 0)));
    // IPv4 fragments (MF set, or an offset).
    let mut frag4 = build(ip(CLIENT4), ip(HOST4), &udp(1, 2, b"abc"), hdr(0, 64));
    frag4[6] = 0x20;
    assert_eq!(parse(&frag4), Err(TranslateError::Fragment));
    frag4[6] = 0;
    frag4[7] = 1;
    assert_eq!(parse(&frag4), Err(TranslateError::Fragment));
    // Mismatched rewrites.
    let p = build(ip(CLIENT4), ip(HOST4), &udp(1, 2, b""), hdr(0, 64));
    let mixed = FlowTuple {
        proto: L4Proto::Udp,
        src: ip(CLIENT4),
        sport: 1,
        dst: ip(CLIENT6),
        dport: 2,
    };
    assert!(matches!(
        translate(&p, &Addressing::Flow(mixed), 0, &mut out),
        Err(TranslateError::Mismatch(_))
    ));
    let wrong_proto = FlowTuple {
        proto: L4Proto::Tcp,
        ..flow(&p)
    };
    assert!(matches!(
        translate(&p, &Addressing::Flow(wrong_proto), 0, &mut out),
        Err(TranslateError::Mismatch(_))
    ));
    let err_target = Addressing::IcmpError {
        src: ip(HOST4),
        dst: ip(CLIENT4),
        inner: flow(&p),
    };
    assert!(matches!(
        translate(&p, &err_target, 0, &mut out),
        Err(TranslateError::Mismatch(_))
    ));
    let mut pm = p.clone();
    assert!(matches!(
        rewrite_in_place(
            &mut pm,
            &Addressing::Flow(FlowTuple {
                src: ip(CLIENT6),
                dst: ip(CLIENT6),
                ..flow(&p)
            })
        ),
        Err(TranslateError::Mismatch(_))
    ));
    assert_eq!(pm, p, "a refused rewrite leaves the packet alone");
}

#[test]
fn truncated_packets_are_errors() {
    let (orig, out4, _, reply6) = via_flow();
    let mut err = Vec::new();
    icmp_error(&out4, ip(HOST4), 3, 3, [0; 4], &mut err).unwrap();
    for pkt in [&orig, &out4, &reply6, &err] {
        for n in 0..pkt.len() {
            let cut = &pkt[..n];
            assert!(parse(cut).is_err(), "len {n}");
            let mut m = cut.to_vec();
            let _ = rewrite_in_place(&mut m, &parse(pkt).unwrap().addressing);
            let mut out = Vec::new();
            let _ = translate(cut, &parse(pkt).unwrap().addressing, 0, &mut out);
        }
    }
    assert_eq!(parse(&[]), Err(TranslateError::Truncated));
    assert_eq!(parse(&[0x50; 40]), Err(TranslateError::BadVersion));
    let mut bad_ihl = out4.clone();
    bad_ihl[0] = 0x44;
    assert!(matches!(parse(&bad_ihl), Err(TranslateError::Malformed(_))));
    let mut bad_udp = out4.clone();
    bad_udp[24..26].copy_from_slice(&4u16.to_be_bytes());
    assert!(matches!(parse(&bad_udp), Err(TranslateError::Malformed(_))));
}

#[test]
fn ttl_decrement() {
    let mut p = build(ip(CLIENT4), ip(HOST4), &udp(1, 2, b""), hdr(0, 64));
    assert_eq!(decrement_ttl(&mut p), Ok(true));
    assert_eq!(p[8], 63);
    assert_valid(&p);
    let mut one = build(ip(CLIENT4), ip(HOST4), &udp(1, 2, b""), hdr(0, 1));
    let before = one.clone();
    assert_eq!(decrement_ttl(&mut one), Ok(false));
    assert_eq!(one, before);
    let mut p6 = build(ip(CLIENT6), host_via(), &udp(1, 2, b""), hdr(0, 2));
    assert_eq!(decrement_ttl(&mut p6), Ok(true));
    assert_eq!(p6[7], 1);
    assert_eq!(decrement_ttl(&mut p6), Ok(false));
    assert_eq!(
        decrement_ttl(&mut [0x45; 10]),
        Err(TranslateError::Truncated)
    );
}

// ---------------------------------------------------------------------------------------------
// Property tests.

fn arb_l4() -> impl Strategy<Value = L4> {
    let payload = proptest::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        (any::<u16>(), any::<u16>(), any::<u8>(), payload.clone()).prop_map(
            |(sport, dport, flags, payload)| L4::Tcp {
                sport,
                dport,
                flags,
                payload
            }
        ),
        (any::<u16>(), any::<u16>(), payload.clone()).prop_map(|(sport, dport, payload)| L4::Udp {
            sport,
            dport,
            payload,
            no_csum: false
        }),
        (any::<bool>(), any::<u16>(), any::<u16>(), payload).prop_map(
            |(request, id, seq, payload)| L4::Echo {
                request,
                id,
                seq,
                payload
            }
        ),
    ]
}

fn arb_v4() -> impl Strategy<Value = IpAddr> {
    any::<[u8; 4]>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a)))
}

fn arb_v6() -> impl Strategy<Value = IpAddr> {
    any::<[u8; 16]>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a)))
}

fn arb_hdr() -> impl Strategy<Value = Hdr> {
    (any::<u8>(), 1u8..=255).prop_map(|(tos, ttl)| Hdr {
        tos,
        ttl,
        id: 0,
        df: false,
    })
}

/// A new tuple with the packet's protocol and the requested family.
fn retarget(l4: &L4, t: &FlowTuple, src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> FlowTuple {
    let (sport, dport) = match l4 {
        // Echo keeps its request/reply shape: the ID is in sport or dport.
        L4::Echo { request: true, .. } => (sport, 0),
        L4::Echo { request: false, .. } => (0, dport),
        _ => (sport, dport),
    };
    FlowTuple {
        proto: t.proto,
        src,
        sport,
        dst,
        dport,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// IPv6 → IPv4 → IPv6 restores the packet; every intermediate checksum verifies and the
    /// translated packet parses to the requested addressing.
    #[test]
    fn v6_v4_round_trip(s6 in arb_v6(), d6 in arb_v6(), s4 in arb_v4(), d4 in arb_v4(),
                        sp in 1u16.., dp in 1u16.., l4 in arb_l4(), h in arb_hdr(), id in any::<u16>()) {
        let orig = build(s6, d6, &l4, h);
        let t = flow(&orig);
        let to = retarget(&l4, &t, s4, d4, sp, dp);
        let mut v4p = Vec::new();
        translate(&orig, &Addressing::Flow(to), id, &mut v4p).unwrap();
        assert_valid(&v4p);
        prop_assert_eq!(parse(&v4p).unwrap().addressing, Addressing::Flow(to));
        prop_assert_eq!(u16::from_be_bytes([v4p[4], v4p[5]]), id);
        let mut back = Vec::new();
        translate(&v4p, &Addressing::Flow(t), 0, &mut back).unwrap();
        prop_assert_eq!(back, orig);
    }

    /// IPv4 → IPv6 → IPv4 restores the packet (identification and DF as a translator sets them).
    #[test]
    fn v4_v6_round_trip(s4 in arb_v4(), d4 in arb_v4(), s6 in arb_v6(), d6 in arb_v6(),
                        sp in 1u16.., dp in 1u16.., l4 in arb_l4(), h in arb_hdr(), id in any::<u16>()) {
        let probe = build(s4, d4, &l4, h);
        let orig = build(s4, d4, &l4, Hdr { id, df: probe.len() > DF_THRESHOLD, ..h });
        let t = flow(&orig);
        let to = retarget(&l4, &t, s6, d6, sp, dp);
        let mut v6p = Vec::new();
        translate(&orig, &Addressing::Flow(to), 0, &mut v6p).unwrap();
        assert_valid(&v6p);
        prop_assert_eq!(parse(&v6p).unwrap().addressing, Addressing::Flow(to));
        let mut back = Vec::new();
        translate(&v6p, &Addressing::Flow(t), id, &mut back).unwrap();
        prop_assert_eq!(back, orig);
    }

    /// Same-family SNAT then rewriting back restores the packet; SNAT output equals a packet
    /// built from scratch with the new tuple (incremental == full checksums).
    #[test]
    fn snat_round_trip(v6 in any::<bool>(), a in any::<[u8; 16]>(), b in any::<[u8; 16]>(), c in any::<[u8; 16]>(),
                       sp in 1u16.., l4 in arb_l4(), h in arb_hdr()) {
        let mk = |x: [u8; 16]| if v6 { IpAddr::V6(Ipv6Addr::from(x)) } else { IpAddr::V4(Ipv4Addr::new(x[0], x[1], x[2], x[3])) };
        let (src, dst, lan) = (mk(a), mk(b), mk(c));
        let orig = build(src, dst, &l4, h);
        let t = flow(&orig);
        let to = retarget(&l4, &t, lan, dst, sp, t.dport);
        let mut p = orig.clone();
        rewrite_in_place(&mut p, &Addressing::Flow(to)).unwrap();
        let rebuilt_l4 = match &l4 {
            L4::Tcp { flags, payload, .. } => L4::Tcp { sport: to.sport, dport: to.dport, flags: *flags, payload: payload.clone() },
            L4::Udp { payload, .. } => L4::Udp { sport: to.sport, dport: to.dport, payload: payload.clone(), no_csum: false },
            L4::Echo { request, seq, payload, .. } => L4::Echo { request: *request, id: if *request { to.sport } else { to.dport }, seq: *seq, payload: payload.clone() },
            L4::Raw { .. } => unreachable!(),
        };
        prop_assert_eq!(&p, &build(lan, dst, &rebuilt_l4, h));
        rewrite_in_place(&mut p, &Addressing::Flow(t)).unwrap();
        prop_assert_eq!(p, orig);
    }

    /// ICMP errors about random flows translate both ways with valid checksums and the
    /// requested addressing.
    #[test]
    fn icmp_errors_translate(s4 in arb_v4(), d4 in arb_v4(), r4 in arb_v4(), s6 in arb_v6(), d6 in arb_v6(), r6 in arb_v6(),
                             l4 in arb_l4(), h in arb_hdr(), which in 0usize..5) {
        // An IPv4 packet s4 → d4 gets an error from r4; translate to IPv6 about s6 → d6.
        let pkt4 = build(s4, d4, &l4, h);
        let (typ, code, rest) = [(3u8, 3u8, [0u8; 4]), (3, 4, [0, 0, 5, 0]), (11, 0, [0; 4]), (3, 1, [0; 4]), (3, 2, [0; 4])][which];
        let mut e4 = Vec::new();
        icmp_error(&pkt4, r4, typ, code, rest, &mut e4).unwrap();
        let t = flow(&pkt4);
        let inner6 = retarget(&l4, &t, s6, d6, t.sport, t.dport);
        let target = Addressing::IcmpError { src: r6, dst: s6, inner: inner6 };
        let mut e6 = Vec::new();
        translate(&e4, &target, 0, &mut e6).unwrap();
        assert_valid(&e6);
        prop_assert_eq!(parse(&e6).unwrap().addressing, target);
        // And back to IPv4.
        let back_target = Addressing::IcmpError { src: r4, dst: s4, inner: t };
        let mut e4b = Vec::new();
        translate(&e6, &back_target, 0, &mut e4b).unwrap();
        assert_valid(&e4b);
        prop_assert_eq!(parse(&e4b).unwrap().addressing, back_target);
        // The error type survives the round trip.
        prop_assert_eq!((e4b[20], e4b[21]), (typ, code));
    }

    /// Arbitrary bytes never panic any entry point.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), first in prop_oneof![Just(0x45u8), Just(0x46), Just(0x60), any::<u8>()]) {
        let mut bytes = bytes;
        if let Some(b) = bytes.first_mut() { *b = first; }
        let targets = [
            Addressing::Flow(FlowTuple { proto: L4Proto::Udp, src: ip(CLIENT4), sport: 1, dst: ip(HOST4), dport: 2 }),
            Addressing::Flow(FlowTuple { proto: L4Proto::Icmp, src: ip(CLIENT6), sport: 1, dst: host_via(), dport: 0 }),
            Addressing::IcmpError { src: ip(HOST4), dst: ip(CLIENT4), inner: FlowTuple { proto: L4Proto::Tcp, src: ip(CLIENT4), sport: 1, dst: ip(HOST4), dport: 2 } },
            Addressing::IcmpError { src: host_via(), dst: ip(CLIENT6), inner: FlowTuple { proto: L4Proto::Udp, src: ip(CLIENT6), sport: 1, dst: host_via(), dport: 2 } },
        ];
        let _ = parse(&bytes);
        let mut out = Vec::new();
        for t in &targets {
            let _ = translate(&bytes, t, 0, &mut out);
            let mut m = bytes.clone();
            let _ = rewrite_in_place(&mut m, t);
        }
        let _ = via6_to_ipv4(&bytes, (Ipv4Addr::new(1, 2, 3, 4), 5), 0, &mut out);
        let _ = ipv4_to_via6(&bytes, SiteId::new(1), (Ipv6Addr::LOCALHOST, 5), &mut out);
        let _ = icmp_error(&bytes, ip(HOST4), 3, 3, [0; 4], &mut out);
        let _ = icmp_error(&bytes, ip(CLIENT6), 1, 4, [0; 4], &mut out);
        let mut m = bytes.clone();
        let _ = decrement_ttl(&mut m);
    }

    /// Valid packets with random bytes changed never panic, and whatever translates has valid
    /// IPv4 header checksums.
    #[test]
    fn mutated_packets_never_panic(which in 0usize..4, flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in any::<prop::sample::Index>()) {
        let (orig, out4, reply4, reply6) = via_flow();
        let mut err = Vec::new();
        icmp_error(&out4, ip(HOST4), 3, 3, [0; 4], &mut err).unwrap();
        let mut p = [orig, out4, reply4, err][which].clone();
        let _ = reply6;
        for (i, v) in flips {
            let n = p.len();
            p[i.index(n)] = v;
        }
        let n = cut.index(p.len() + 1);
        p.truncate(n.max(1));
        if let Ok(parsed) = parse(&p) {
            let mut out = Vec::new();
            if translate(&p, &parsed.addressing, 0, &mut out).is_ok() {
                prop_assert!(parse(&out).is_ok());
            }
        }
        let mut out = Vec::new();
        let _ = via6_to_ipv4(&p, (Ipv4Addr::new(192, 168, 1, 1), 5), 0, &mut out);
        let _ = ipv4_to_via6(&p, SiteId::new(7), (Ipv6Addr::LOCALHOST, 5), &mut out);
    }
}
