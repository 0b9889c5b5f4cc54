//! Header translation for SNAT and 4via6, as pure functions over packet buffers.
//!
//! Packets are raw IP packets (no link-layer header). Everything is driven by *addressing*:
//! [`parse`] reads a packet's [`Addressing`] (its flow 5-tuple, or for ICMP errors the outer
//! addresses plus the quoted packet's 5-tuple), and [`translate`] / [`rewrite_in_place`] make
//! a packet whose addressing is the one asked for, changing the IP family when needed:
//!
//! * same family (SNAT, de-SNAT): addresses, ports / ICMP echo IDs and checksums are rewritten
//!   in place with incremental checksum updates (RFC 1624);
//! * IPv6 ↔ IPv4 (4via6): the IP header is replaced (RFC 7915 field mapping), ICMPv6 echo ↔
//!   ICMP echo, and the errors destination unreachable, packet too big ↔ fragmentation needed,
//!   time exceeded and parameter problem "next header" ↔ protocol unreachable are translated
//!   with their quoted packet.
//!
//! Conventions shared with conntrack and the XDP programs: an ICMP echo *request* has
//! `sport = id, dport = 0`, an echo *reply* `sport = 0, dport = id`, so a reply's tuple is the
//! reverse of its request's, as for TCP and UDP. TTL / hop limit are copied, not decremented
//! (forwarding does that: the kernel, or [`decrement_ttl`] in the XDP path). Fragments, IPv6
//! extension headers and protocols other than TCP, UDP and ICMP(v6) echo/errors are refused
//! with an error, as is anything malformed; no input makes these functions panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::checksum::{self as ck, finish, udp_wire, update_sums};
use super::via6::{self, SiteId, ViaError};

/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IPv6 next-header value of the fragment header.
pub const IPPROTO_FRAGMENT: u8 = 44;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// Length of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// Translated IPv4 packets longer than this get DF set (RFC 7915 §5.1); shorter ones may be
/// fragmented by IPv4 routers, since IPv6 hosts cannot go below a 1280-byte path MTU.
pub const DF_THRESHOLD: usize = 1260;
/// ICMPv6 errors are truncated to this size (the IPv6 minimum MTU).
pub const ICMPV6_ERROR_MAX: usize = 1280;
/// ICMPv4 errors built by [`icmp_error`] quote at most this much (RFC 1812 §4.3.2.3).
pub const ICMPV4_ERROR_MAX: usize = 576;

/// ICMPv4 types used here.
pub mod icmp4 {
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable.
    pub const DEST_UNREACH: u8 = 3;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 8;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
    /// Parameter problem.
    pub const PARAM_PROBLEM: u8 = 12;
    /// Destination unreachable code: fragmentation needed and DF set.
    pub const CODE_FRAG_NEEDED: u8 = 4;
}

/// ICMPv6 types used here.
pub mod icmp6 {
    /// Destination unreachable.
    pub const DEST_UNREACH: u8 = 1;
    /// Packet too big.
    pub const PACKET_TOO_BIG: u8 = 2;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 3;
    /// Parameter problem.
    pub const PARAM_PROBLEM: u8 = 4;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 128;
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 129;
}

/// Why a packet was not translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// Shorter than its headers or its length fields say.
    #[error("packet truncated")]
    Truncated,
    /// The IP version nibble is neither 4 nor 6.
    #[error("not an IPv4 or IPv6 packet")]
    BadVersion,
    /// A header field is inconsistent.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// IPv4 fragment or IPv6 fragment header: needs reassembly first.
    #[error("fragmented packet")]
    Fragment,
    /// Transport protocol (or IPv6 extension header) not handled.
    #[error("unsupported protocol {0}")]
    UnsupportedProtocol(u8),
    /// ICMP type/code not handled (or with no equivalent in the other family).
    #[error("unsupported ICMP type {0} code {1}")]
    UnsupportedIcmp(u8, u8),
    /// The requested addressing does not fit the packet (protocol, kind or mixed families).
    #[error("rewrite does not match the packet: {0}")]
    Mismatch(&'static str),
    /// The result would not fit in an IP packet.
    #[error("translated packet too big")]
    TooBig,
    /// The 4via6 destination is not usable.
    #[error("4via6: {0}")]
    Via(#[from] ViaError),
}

type Result<T> = std::result::Result<T, TranslateError>;

/// Transport protocol of a flow; `Icmp` is ICMP / ICMPv6 echo, with the ID as port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP or ICMPv6 echo request/reply.
    Icmp,
}

impl L4Proto {
    /// The IP protocol number in the given family.
    pub const fn ip_proto(self, v6: bool) -> u8 {
        match (self, v6) {
            (L4Proto::Tcp, _) => IPPROTO_TCP,
            (L4Proto::Udp, _) => IPPROTO_UDP,
            (L4Proto::Icmp, false) => IPPROTO_ICMP,
            (L4Proto::Icmp, true) => IPPROTO_ICMPV6,
        }
    }
}

/// A flow's 5-tuple as seen in one packet (ICMP echo: see the module docs for ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowTuple {
    /// Transport protocol.
    pub proto: L4Proto,
    /// Source address.
    pub src: IpAddr,
    /// Source port (echo request: ID; echo reply: 0).
    pub sport: u16,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port (echo request: 0; echo reply: ID).
    pub dport: u16,
}

impl FlowTuple {
    /// The tuple of a packet going the other way.
    pub fn reversed(&self) -> FlowTuple {
        FlowTuple {
            proto: self.proto,
            src: self.dst,
            sport: self.dport,
            dst: self.src,
            dport: self.sport,
        }
    }

    /// True for IPv6 tuples (source and destination must agree; see [`Addressing`]).
    pub fn is_v6(&self) -> bool {
        self.src.is_ipv6()
    }
}

/// What identifies a packet for NAT: its flow, or for an ICMP error the outer addresses and
/// the flow of the packet it quotes (as that packet was sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Addressing {
    /// TCP, UDP or ICMP echo.
    Flow(FlowTuple),
    /// ICMP / ICMPv6 error.
    IcmpError {
        /// Outer source (the host or router reporting the error).
        src: IpAddr,
        /// Outer destination (the sender of the quoted packet).
        dst: IpAddr,
        /// The quoted packet's flow.
        inner: FlowTuple,
    },
}

impl Addressing {
    fn is_v6(&self) -> Result<bool> {
        let (a, b, inner) = match self {
            Addressing::Flow(t) => (t.src, t.dst, None),
            Addressing::IcmpError { src, dst, inner } => (*src, *dst, Some(inner)),
        };
        let v6 = a.is_ipv6();
        let inner_ok = inner.is_none_or(|t| t.src.is_ipv6() == v6 && t.dst.is_ipv6() == v6);
        if b.is_ipv6() != v6 || !inner_ok {
            return Err(TranslateError::Mismatch("mixed address families"));
        }
        Ok(v6)
    }
}

/// A parsed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// Flow or ICMP-error addressing.
    pub addressing: Addressing,
    /// TCP flags (byte 13 of the TCP header) of a TCP flow packet, else 0.
    pub tcp_flags: u8,
    /// Length of the IP packet (bytes after it in the buffer are ignored).
    pub len: usize,
}

/// TCP flag bits in [`Parsed::tcp_flags`].
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

// ---------------------------------------------------------------------------------------------
// Checked byte access: every read/write is bounds-checked and fails with `Truncated`.

fn rd8(b: &[u8], off: usize) -> Result<u8> {
    b.get(off).copied().ok_or(TranslateError::Truncated)
}

fn rd16(b: &[u8], off: usize) -> Result<u16> {
    match b.get(off..off + 2) {
        Some(s) => Ok(u16::from_be_bytes([s[0], s[1]])),
        None => Err(TranslateError::Truncated),
    }
}

fn rd_arr<const N: usize>(b: &[u8], off: usize) -> Result<[u8; N]> {
    b.get(off..off + N)
        .and_then(|s| s.try_into().ok())
        .ok_or(TranslateError::Truncated)
}

fn wr8(b: &mut [u8], off: usize, v: u8) -> Result<()> {
    *b.get_mut(off).ok_or(TranslateError::Truncated)? = v;
    Ok(())
}

fn wr16(b: &mut [u8], off: usize, v: u16) -> Result<()> {
    wr_bytes(b, off, &v.to_be_bytes())
}

fn wr_bytes(b: &mut [u8], off: usize, v: &[u8]) -> Result<()> {
    b.get_mut(off..off + v.len())
        .ok_or(TranslateError::Truncated)?
        .copy_from_slice(v);
    Ok(())
}

fn ip_bytes(a: &IpAddr) -> ([u8; 16], usize) {
    match a {
        IpAddr::V4(a) => {
            let mut o = [0u8; 16];
            o[..4].copy_from_slice(&a.octets());
            (o, 4)
        }
        IpAddr::V6(a) => (a.octets(), 16),
    }
}

fn addr_sum(a: &IpAddr) -> u64 {
    let (b, n) = ip_bytes(a);
    ck::sum(&b[..n], 0)
}

// ---------------------------------------------------------------------------------------------
// Parsing.

/// An IP header as far as translation cares.
#[derive(Debug, Clone, Copy)]
struct IpHdr {
    v6: bool,
    src: IpAddr,
    dst: IpAddr,
    /// L4 protocol number.
    proto: u8,
    hdr_len: usize,
    /// Packet length the header declares (outer packets: never beyond the buffer).
    len: usize,
    ttl: u8,
    tos: u8,
}

impl IpHdr {
    /// L4 length the header declares (used in pseudo-headers).
    fn l4_len(&self) -> usize {
        self.len - self.hdr_len
    }
}

/// Parses an IP header. Quoted (`inner`) packets may be cut short and may be first fragments.
fn parse_ip(b: &[u8], inner: bool) -> Result<IpHdr> {
    let first = rd8(b, 0)?;
    match first >> 4 {
        4 => {
            if b.len() < IPV4_HEADER_LEN {
                return Err(TranslateError::Truncated);
            }
            let hdr_len = usize::from(first & 0x0f) * 4;
            if hdr_len < IPV4_HEADER_LEN {
                return Err(TranslateError::Malformed("IPv4 header length below 20"));
            }
            if b.len() < hdr_len {
                return Err(TranslateError::Truncated);
            }
            let len = usize::from(rd16(b, 2)?);
            if len < hdr_len {
                return Err(TranslateError::Malformed(
                    "IPv4 total length below header length",
                ));
            }
            if !inner && len > b.len() {
                return Err(TranslateError::Truncated);
            }
            let frag = rd16(b, 6)?;
            if frag & 0x1fff != 0 || (!inner && frag & 0x2000 != 0) {
                return Err(TranslateError::Fragment);
            }
            let proto = rd8(b, 9)?;
            if !matches!(proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP) {
                return Err(TranslateError::UnsupportedProtocol(proto));
            }
            Ok(IpHdr {
                v6: false,
                src: IpAddr::V4(Ipv4Addr::from(rd_arr::<4>(b, 12)?)),
                dst: IpAddr::V4(Ipv4Addr::from(rd_arr::<4>(b, 16)?)),
                proto,
                hdr_len,
                len,
                ttl: rd8(b, 8)?,
                tos: rd8(b, 1)?,
            })
        }
        6 => {
            if b.len() < IPV6_HEADER_LEN {
                return Err(TranslateError::Truncated);
            }
            let len = IPV6_HEADER_LEN + usize::from(rd16(b, 4)?);
            if !inner && len > b.len() {
                return Err(TranslateError::Truncated);
            }
            let proto = rd8(b, 6)?;
            match proto {
                IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6 => {}
                IPPROTO_FRAGMENT => return Err(TranslateError::Fragment),
                other => return Err(TranslateError::UnsupportedProtocol(other)),
            }
            let tos = ((first & 0x0f) << 4) | (rd8(b, 1)? >> 4);
            Ok(IpHdr {
                v6: true,
                src: IpAddr::V6(Ipv6Addr::from(rd_arr::<16>(b, 8)?)),
                dst: IpAddr::V6(Ipv6Addr::from(rd_arr::<16>(b, 24)?)),
                proto,
                hdr_len: IPV6_HEADER_LEN,
                len,
                ttl: rd8(b, 7)?,
                tos,
            })
        }
        _ => Err(TranslateError::BadVersion),
    }
}

/// What the transport header is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L4Kind {
    Tcp,
    Udp,
    Echo { request: bool },
    Error { typ: u8, code: u8 },
}

fn is_icmp(proto: u8) -> bool {
    proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6
}

/// Classifies the transport header in `l4` (bytes available). Quoted headers need 8 bytes.
fn parse_l4(ip: &IpHdr, l4: &[u8], inner: bool) -> Result<L4Kind> {
    if l4.len() < 8 {
        return Err(TranslateError::Truncated);
    }
    match ip.proto {
        IPPROTO_TCP => {
            if !inner {
                let doff = usize::from(rd8(l4, 12)? >> 4) * 4;
                if doff < 20 || doff > l4.len() {
                    return Err(TranslateError::Malformed("TCP data offset"));
                }
            }
            Ok(L4Kind::Tcp)
        }
        IPPROTO_UDP => {
            if !inner {
                let ulen = usize::from(rd16(l4, 4)?);
                if ulen < 8 || ulen > l4.len() {
                    return Err(TranslateError::Malformed("UDP length"));
                }
            }
            Ok(L4Kind::Udp)
        }
        proto => {
            let (typ, code) = (rd8(l4, 0)?, rd8(l4, 1)?);
            let kind = match (proto == IPPROTO_ICMPV6, typ) {
                (false, icmp4::ECHO_REQUEST) | (true, icmp6::ECHO_REQUEST) => {
                    L4Kind::Echo { request: true }
                }
                (false, icmp4::ECHO_REPLY) | (true, icmp6::ECHO_REPLY) => {
                    L4Kind::Echo { request: false }
                }
                (false, icmp4::DEST_UNREACH | icmp4::TIME_EXCEEDED | icmp4::PARAM_PROBLEM)
                | (true, icmp6::DEST_UNREACH..=icmp6::PARAM_PROBLEM)
                    if !inner =>
                {
                    L4Kind::Error { typ, code }
                }
                _ => return Err(TranslateError::UnsupportedIcmp(typ, code)),
            };
            Ok(kind)
        }
    }
}

/// The flow tuple of a (non-error) transport header.
fn flow_of(ip: &IpHdr, kind: L4Kind, l4: &[u8]) -> Result<FlowTuple> {
    let (proto, sport, dport) = match kind {
        L4Kind::Tcp => (L4Proto::Tcp, rd16(l4, 0)?, rd16(l4, 2)?),
        L4Kind::Udp => (L4Proto::Udp, rd16(l4, 0)?, rd16(l4, 2)?),
        L4Kind::Echo { request: true } => (L4Proto::Icmp, rd16(l4, 4)?, 0),
        L4Kind::Echo { request: false } => (L4Proto::Icmp, 0, rd16(l4, 4)?),
        L4Kind::Error { .. } => return Err(TranslateError::Mismatch("ICMP error is not a flow")),
    };
    Ok(FlowTuple {
        proto,
        src: ip.src,
        sport,
        dst: ip.dst,
        dport,
    })
}

/// L4 bytes of an outer packet (up to its declared length) or of a quoted one (what is there).
fn l4_slice<'a>(b: &'a [u8], ip: &IpHdr) -> &'a [u8] {
    let end = ip.len.min(b.len());
    b.get(ip.hdr_len..end).unwrap_or(&[])
}

/// Reads a packet's addressing, TCP flags and length.
pub fn parse(pkt: &[u8]) -> Result<Parsed> {
    let ip = parse_ip(pkt, false)?;
    let l4 = l4_slice(pkt, &ip);
    let kind = parse_l4(&ip, l4, false)?;
    let addressing = match kind {
        L4Kind::Error { .. } => {
            let quoted = l4.get(8..).unwrap_or(&[]);
            let iip = parse_ip(quoted, true)?;
            if iip.v6 != ip.v6 {
                return Err(TranslateError::Malformed(
                    "ICMP error quotes the other family",
                ));
            }
            let il4 = l4_slice(quoted, &iip);
            let ikind = parse_l4(&iip, il4, true)?;
            Addressing::IcmpError {
                src: ip.src,
                dst: ip.dst,
                inner: flow_of(&iip, ikind, il4)?,
            }
        }
        _ => Addressing::Flow(flow_of(&ip, kind, l4)?),
    };
    let tcp_flags = match kind {
        L4Kind::Tcp => rd8(l4, 13)?,
        _ => 0,
    };
    Ok(Parsed {
        addressing,
        tcp_flags,
        len: ip.len,
    })
}

// ---------------------------------------------------------------------------------------------
// Transport header rewriting.

/// Sum of the pseudo-header a transport checksum covers (none for ICMPv4).
fn pseudo_sum(v6: bool, src: &IpAddr, dst: &IpAddr, proto: u8, len: usize) -> u64 {
    if !v6 && proto == IPPROTO_ICMP {
        return 0;
    }
    addr_sum(src) + addr_sum(dst) + u64::from(proto) + (len as u64 >> 16) + (len as u64 & 0xffff)
}

/// Old and new pseudo-header sums and family of a transport header being rewritten.
struct L4Change {
    old_pseudo: u64,
    new_pseudo: u64,
    to_v6: bool,
    /// The whole transport segment is present (not a quote), so a missing UDP checksum can
    /// be computed when moving to IPv6.
    complete: bool,
}

/// Rewrites ports / echo ID (to `to`) and the checksum of the transport header in `l4`,
/// mapping echo types to the new family.
fn rewrite_l4(l4: &mut [u8], kind: L4Kind, to: &FlowTuple, ch: &L4Change) -> Result<()> {
    match kind {
        L4Kind::Tcp | L4Kind::Udp => {
            let (osp, odp) = (rd16(l4, 0)?, rd16(l4, 2)?);
            wr16(l4, 0, to.sport)?;
            wr16(l4, 2, to.dport)?;
            let removed = ch.old_pseudo + u64::from(osp) + u64::from(odp);
            let added = ch.new_pseudo + u64::from(to.sport) + u64::from(to.dport);
            if kind == L4Kind::Tcp {
                // A quote may stop before the checksum (offset 16).
                if let Ok(c) = rd16(l4, 16) {
                    wr16(l4, 16, update_sums(c, removed, added))?;
                }
            } else {
                let c = rd16(l4, 6)?;
                if c != 0 {
                    wr16(l4, 6, udp_wire(update_sums(c, removed, added)))?;
                } else if ch.to_v6 && ch.complete {
                    // IPv6 requires a UDP checksum (RFC 8200 §8.1): compute it in full.
                    let ulen = usize::from(rd16(l4, 4)?);
                    let seg = l4.get(..ulen).ok_or(TranslateError::Truncated)?;
                    wr16(l4, 6, udp_wire(finish(ck::sum(seg, ch.new_pseudo))))?;
                }
            }
        }
        L4Kind::Echo { request } => {
            let (otyp, code) = (rd8(l4, 0)?, rd8(l4, 1)?);
            let ntyp = match (ch.to_v6, request) {
                (false, true) => icmp4::ECHO_REQUEST,
                (false, false) => icmp4::ECHO_REPLY,
                (true, true) => icmp6::ECHO_REQUEST,
                (true, false) => icmp6::ECHO_REPLY,
            };
            let oid = rd16(l4, 4)?;
            let nid = if request { to.sport } else { to.dport };
            wr8(l4, 0, ntyp)?;
            wr16(l4, 4, nid)?;
            let removed =
                ch.old_pseudo + u64::from(u16::from_be_bytes([otyp, code])) + u64::from(oid);
            let added =
                ch.new_pseudo + u64::from(u16::from_be_bytes([ntyp, code])) + u64::from(nid);
            let c = rd16(l4, 2)?;
            wr16(l4, 2, update_sums(c, removed, added))?;
        }
        L4Kind::Error { .. } => return Err(TranslateError::Mismatch("ICMP error is not a flow")),
    }
    Ok(())
}

fn check_proto(kind: L4Kind, to: &FlowTuple) -> Result<()> {
    let ok = matches!(
        (kind, to.proto),
        (L4Kind::Tcp, L4Proto::Tcp)
            | (L4Kind::Udp, L4Proto::Udp)
            | (L4Kind::Echo { .. }, L4Proto::Icmp)
    );
    if ok {
        Ok(())
    } else {
        Err(TranslateError::Mismatch("transport protocol differs"))
    }
}

/// Writes new addresses into an IP header of the same family, updating the IPv4 header
/// checksum incrementally.
fn rewrite_ip_addrs(hdr: &mut [u8], ip: &IpHdr, src: &IpAddr, dst: &IpAddr) -> Result<()> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) if !ip.v6 => {
            let removed = addr_sum(&ip.src) + addr_sum(&ip.dst);
            let added = addr_sum(src) + addr_sum(dst);
            wr_bytes(hdr, 12, &s.octets())?;
            wr_bytes(hdr, 16, &d.octets())?;
            let c = rd16(hdr, 10)?;
            wr16(hdr, 10, update_sums(c, removed, added))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) if ip.v6 => {
            wr_bytes(hdr, 8, &s.octets())?;
            wr_bytes(hdr, 24, &d.octets())
        }
        _ => Err(TranslateError::Mismatch("address family differs")),
    }
}

// ---------------------------------------------------------------------------------------------
// Same-family rewriting (SNAT / de-SNAT).

/// Rewrites a packet in place to `to` (same family): a flow gets the tuple `to`; an ICMP
/// error gets new outer addresses and its quoted packet the tuple `inner`. Returns the IP
/// packet length (bytes after it are left alone).
pub fn rewrite_in_place(pkt: &mut [u8], to: &Addressing) -> Result<usize> {
    let ip = parse_ip(pkt, false)?;
    if to.is_v6()? != ip.v6 {
        return Err(TranslateError::Mismatch(
            "address family differs; use translate",
        ));
    }
    let (hdr, rest) = pkt.split_at_mut(ip.hdr_len);
    let l4 = rest
        .get_mut(..ip.l4_len())
        .ok_or(TranslateError::Truncated)?;
    let kind = parse_l4(&ip, l4, false)?;
    match (kind, to) {
        (L4Kind::Error { .. }, Addressing::IcmpError { src, dst, inner }) => {
            // Check the quote before changing anything, so a refusal leaves the packet alone.
            check_quote(l4, inner)?;
            rewrite_ip_addrs(hdr, &ip, src, dst)?;
            rewrite_quote_same_family(l4, inner)?;
            write_icmp_checksum(l4, ip.v6, src, dst)?;
        }
        (L4Kind::Error { .. }, _) | (_, Addressing::IcmpError { .. }) => {
            return Err(TranslateError::Mismatch("ICMP error vs flow"));
        }
        (_, Addressing::Flow(t)) => {
            check_proto(kind, t)?;
            let proto = ip.proto;
            let change = L4Change {
                old_pseudo: pseudo_sum(ip.v6, &ip.src, &ip.dst, proto, ip.l4_len()),
                new_pseudo: pseudo_sum(ip.v6, &t.src, &t.dst, proto, ip.l4_len()),
                to_v6: ip.v6,
                complete: true,
            };
            rewrite_ip_addrs(hdr, &ip, &t.src, &t.dst)?;
            rewrite_l4(l4, kind, t, &change)?;
        }
    }
    Ok(ip.len)
}

/// Parses the quote of an ICMP error and checks that it can be rewritten to `inner` (same
/// family).
fn check_quote(icmp: &[u8], inner: &FlowTuple) -> Result<(IpHdr, L4Kind)> {
    let quoted = icmp.get(8..).ok_or(TranslateError::Truncated)?;
    let iip = parse_ip(quoted, true)?;
    if iip.v6 != inner.is_v6() {
        return Err(TranslateError::Mismatch("quoted packet family differs"));
    }
    let ikind = parse_l4(&iip, l4_slice(quoted, &iip), true)?;
    check_proto(ikind, inner)?;
    Ok((iip, ikind))
}

/// Rewrites the quoted packet of an ICMP error (same family) to the tuple `inner`.
fn rewrite_quote_same_family(icmp: &mut [u8], inner: &FlowTuple) -> Result<()> {
    let (iip, ikind) = check_quote(icmp, inner)?;
    let quoted = icmp.get_mut(8..).ok_or(TranslateError::Truncated)?;
    let end = iip.len.min(quoted.len());
    let (ihdr, irest) = quoted.split_at_mut(iip.hdr_len);
    let il4 = irest
        .get_mut(..end - iip.hdr_len)
        .ok_or(TranslateError::Truncated)?;
    let change = L4Change {
        old_pseudo: pseudo_sum(iip.v6, &iip.src, &iip.dst, iip.proto, iip.l4_len()),
        new_pseudo: pseudo_sum(iip.v6, &inner.src, &inner.dst, iip.proto, iip.l4_len()),
        to_v6: iip.v6,
        complete: false,
    };
    rewrite_ip_addrs(ihdr, &iip, &inner.src, &inner.dst)?;
    rewrite_l4(il4, ikind, inner, &change)
}

/// Computes an ICMP(v6) message's checksum in full.
fn write_icmp_checksum(icmp: &mut [u8], v6: bool, src: &IpAddr, dst: &IpAddr) -> Result<()> {
    wr16(icmp, 2, 0)?;
    let proto = if v6 { IPPROTO_ICMPV6 } else { IPPROTO_ICMP };
    let pseudo = pseudo_sum(v6, src, dst, proto, icmp.len());
    let c = finish(ck::sum(icmp, pseudo));
    wr16(icmp, 2, c)
}

// ---------------------------------------------------------------------------------------------
// Cross-family translation (4via6).

/// Appends an IPv4 header (no options) with a correct header checksum.
#[allow(clippy::too_many_arguments)]
fn push_ipv4_header(
    out: &mut Vec<u8>,
    tos: u8,
    total_len: usize,
    ident: u16,
    ttl: u8,
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> Result<()> {
    let total = u16::try_from(total_len).map_err(|_| TranslateError::TooBig)?;
    let flags: u16 = if total_len > DF_THRESHOLD { 0x4000 } else { 0 };
    let start = out.len();
    out.extend_from_slice(&[0x45, tos]);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&ident.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[ttl, proto, 0, 0]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    let c = ck::checksum(&out[start..]);
    out[start + 10..start + 12].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Appends a fixed IPv6 header (flow label 0).
fn push_ipv6_header(
    out: &mut Vec<u8>,
    tclass: u8,
    payload_len: usize,
    next: u8,
    hop: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
) -> Result<()> {
    let plen = u16::try_from(payload_len).map_err(|_| TranslateError::TooBig)?;
    out.extend_from_slice(&[0x60 | (tclass >> 4), tclass << 4, 0, 0]);
    out.extend_from_slice(&plen.to_be_bytes());
    out.extend_from_slice(&[next, hop]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    Ok(())
}

fn v4(a: &IpAddr) -> Result<Ipv4Addr> {
    match a {
        IpAddr::V4(a) => Ok(*a),
        IpAddr::V6(_) => Err(TranslateError::Mismatch("want an IPv4 address")),
    }
}

fn v6(a: &IpAddr) -> Result<Ipv6Addr> {
    match a {
        IpAddr::V6(a) => Ok(*a),
        IpAddr::V4(_) => Err(TranslateError::Mismatch("want an IPv6 address")),
    }
}

/// Appends an IP header of the other family for `ip`, addressed `src` → `dst`, declaring an
/// L4 length of `l4_len`.
fn push_header_for(
    out: &mut Vec<u8>,
    ip: &IpHdr,
    src: &IpAddr,
    dst: &IpAddr,
    l4_len: usize,
    ipv4_id: u16,
) -> Result<()> {
    let proto = if is_icmp(ip.proto) {
        L4Proto::Icmp.ip_proto(!ip.v6)
    } else {
        ip.proto
    };
    if ip.v6 {
        push_ipv4_header(
            out,
            ip.tos,
            IPV4_HEADER_LEN + l4_len,
            ipv4_id,
            ip.ttl,
            proto,
            v4(src)?,
            v4(dst)?,
        )
    } else {
        push_ipv6_header(out, ip.tos, l4_len, proto, ip.ttl, v6(src)?, v6(dst)?)
    }
}

/// Translates a flow packet to the other family (header replaced, L4 fixed up).
fn translate_flow(
    pkt: &[u8],
    ip: &IpHdr,
    to: &FlowTuple,
    ipv4_id: u16,
    out: &mut Vec<u8>,
) -> Result<()> {
    let l4 = l4_slice(pkt, ip);
    let kind = parse_l4(ip, l4, false)?;
    check_proto(kind, to)?;
    push_header_for(out, ip, &to.src, &to.dst, l4.len(), ipv4_id)?;
    let start = out.len();
    out.extend_from_slice(l4);
    let new_proto = to.proto.ip_proto(!ip.v6);
    let change = L4Change {
        old_pseudo: pseudo_sum(ip.v6, &ip.src, &ip.dst, ip.proto, ip.l4_len()),
        new_pseudo: pseudo_sum(!ip.v6, &to.src, &to.dst, new_proto, ip.l4_len()),
        to_v6: !ip.v6,
        complete: true,
    };
    rewrite_l4(&mut out[start..], kind, to, &change)
}

/// ICMPv6 error → ICMPv4 (type, code, rest of header), RFC 7915 §5.2.
fn icmp_error_6to4(typ: u8, code: u8, rest: [u8; 4]) -> Result<(u8, u8, [u8; 4])> {
    let unsupported = Err(TranslateError::UnsupportedIcmp(typ, code));
    Ok(match typ {
        icmp6::DEST_UNREACH => match code {
            0 | 2 | 3 => (icmp4::DEST_UNREACH, 1, [0; 4]),
            1 => (icmp4::DEST_UNREACH, 10, [0; 4]),
            4 => (icmp4::DEST_UNREACH, 3, [0; 4]),
            _ => return unsupported,
        },
        icmp6::PACKET_TOO_BIG => {
            let mtu = u32::from_be_bytes(rest).saturating_sub(20).min(0xffff) as u16;
            let m = mtu.to_be_bytes();
            (
                icmp4::DEST_UNREACH,
                icmp4::CODE_FRAG_NEEDED,
                [0, 0, m[0], m[1]],
            )
        }
        icmp6::TIME_EXCEEDED => (icmp4::TIME_EXCEEDED, code, [0; 4]),
        icmp6::PARAM_PROBLEM if code == 1 => (icmp4::DEST_UNREACH, 2, [0; 4]),
        _ => return unsupported,
    })
}

/// ICMPv4 error → ICMPv6 (type, code, rest of header), RFC 7915 §4.2.
fn icmp_error_4to6(typ: u8, code: u8, rest: [u8; 4]) -> Result<(u8, u8, [u8; 4])> {
    let unsupported = Err(TranslateError::UnsupportedIcmp(typ, code));
    Ok(match typ {
        icmp4::DEST_UNREACH => match code {
            0 | 1 | 5 | 6 | 7 | 8 | 11 | 12 => (icmp6::DEST_UNREACH, 0, [0; 4]),
            // Protocol unreachable: parameter problem, unrecognized next header at offset 6.
            2 => (icmp6::PARAM_PROBLEM, 1, 6u32.to_be_bytes()),
            3 => (icmp6::DEST_UNREACH, 4, [0; 4]),
            icmp4::CODE_FRAG_NEEDED => {
                let mtu4 = u16::from_be_bytes([rest[2], rest[3]]);
                let mtu6 = if mtu4 == 0 {
                    1280
                } else {
                    u32::from(mtu4) + 20
                };
                (icmp6::PACKET_TOO_BIG, 0, mtu6.to_be_bytes())
            }
            9 | 10 | 13 | 15 => (icmp6::DEST_UNREACH, 1, [0; 4]),
            _ => return unsupported,
        },
        icmp4::TIME_EXCEEDED => (icmp6::TIME_EXCEEDED, code, [0; 4]),
        _ => return unsupported,
    })
}

/// Translates an ICMP error and its quote to the other family.
fn translate_error(
    pkt: &[u8],
    ip: &IpHdr,
    (src, dst, inner): (&IpAddr, &IpAddr, &FlowTuple),
    ipv4_id: u16,
    out: &mut Vec<u8>,
) -> Result<()> {
    let l4 = l4_slice(pkt, ip);
    let (typ, code) = (rd8(l4, 0)?, rd8(l4, 1)?);
    let rest = rd_arr::<4>(l4, 4)?;
    let (ntyp, ncode, nrest) = if ip.v6 {
        icmp_error_6to4(typ, code, rest)?
    } else {
        icmp_error_4to6(typ, code, rest)?
    };
    let quoted = l4.get(8..).unwrap_or(&[]);
    let iip = parse_ip(quoted, true)?;
    if iip.v6 != ip.v6 {
        return Err(TranslateError::Malformed(
            "ICMP error quotes the other family",
        ));
    }
    let il4 = l4_slice(quoted, &iip);
    let ikind = parse_l4(&iip, il4, true)?;
    check_proto(ikind, inner)?;

    // Outer header goes in last (its lengths depend on the body): reserve room for it.
    let hdr_len = if ip.v6 {
        IPV4_HEADER_LEN
    } else {
        IPV6_HEADER_LEN
    };
    out.resize(hdr_len, 0);
    out.extend_from_slice(&[ntyp, ncode, 0, 0]);
    out.extend_from_slice(&nrest);
    // Quoted packet: new header declaring the original L4 length, then the L4 bytes we have.
    push_header_for(out, &iip, &inner.src, &inner.dst, iip.l4_len(), 0)?;
    let istart = out.len();
    out.extend_from_slice(il4);
    let inew_proto = inner.proto.ip_proto(!iip.v6);
    let change = L4Change {
        old_pseudo: pseudo_sum(iip.v6, &iip.src, &iip.dst, iip.proto, iip.l4_len()),
        new_pseudo: pseudo_sum(!iip.v6, &inner.src, &inner.dst, inew_proto, iip.l4_len()),
        to_v6: !iip.v6,
        complete: false,
    };
    rewrite_l4(&mut out[istart..], ikind, inner, &change)?;
    if !ip.v6 {
        out.truncate(ICMPV6_ERROR_MAX);
    }

    let mut head = Vec::with_capacity(hdr_len);
    let icmp_len = out.len() - hdr_len;
    push_header_for(&mut head, ip, src, dst, icmp_len, ipv4_id)?;
    out[..hdr_len].copy_from_slice(&head);
    write_icmp_checksum(&mut out[hdr_len..], !ip.v6, src, dst)
}

/// Writes into `out` the packet `pkt` addressed as `to`, translating between IPv6 and IPv4
/// when the families differ (`ipv4_id` is the identification of a new IPv4 header).
pub fn translate(pkt: &[u8], to: &Addressing, ipv4_id: u16, out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    let ip = parse_ip(pkt, false)?;
    let to_v6 = to.is_v6()?;
    let result = if to_v6 == ip.v6 {
        out.extend_from_slice(&pkt[..ip.len]);
        rewrite_in_place(out, to).map(|_| ())
    } else {
        match to {
            Addressing::Flow(t) => translate_flow(pkt, &ip, t, ipv4_id, out),
            Addressing::IcmpError { src, dst, inner } => {
                translate_error(pkt, &ip, (src, dst, inner), ipv4_id, out)
            }
        }
    };
    if result.is_err() {
        out.clear();
    }
    result
}

// ---------------------------------------------------------------------------------------------
// Convenience wrappers for the common cases.

/// 4via6 → IPv4 for a packet of a flow the tailnet side started (TCP, UDP, echo request): the
/// destination becomes the embedded IPv4 address (checked: site ID and target), the source
/// `snat` (address, port / echo ID). Returns the new tuple.
pub fn via6_to_ipv4(
    pkt: &[u8],
    snat: (Ipv4Addr, u16),
    ipv4_id: u16,
    out: &mut Vec<u8>,
) -> Result<FlowTuple> {
    out.clear();
    let p = parse(pkt)?;
    let Addressing::Flow(t) = p.addressing else {
        return Err(TranslateError::Mismatch("ICMP error is not a flow"));
    };
    let (_, target) = via6::split_via_ip(t.dst)?;
    let to = FlowTuple {
        src: IpAddr::V4(snat.0),
        sport: snat.1,
        dst: IpAddr::V4(target),
        ..t
    };
    translate(pkt, &Addressing::Flow(to), ipv4_id, out)?;
    Ok(to)
}

/// IPv4 → 4via6 for a return flow packet: the source becomes its 4via6 address at `site`, the
/// destination `orig` (the tailnet address and port / echo ID the flow came from).
pub fn ipv4_to_via6(
    pkt: &[u8],
    site: SiteId,
    orig: (Ipv6Addr, u16),
    out: &mut Vec<u8>,
) -> Result<FlowTuple> {
    out.clear();
    let p = parse(pkt)?;
    let Addressing::Flow(t) = p.addressing else {
        return Err(TranslateError::Mismatch("ICMP error is not a flow"));
    };
    let to = FlowTuple {
        src: IpAddr::V6(via6::via_addr(site, v4(&t.src)?)),
        dst: IpAddr::V6(orig.0),
        dport: orig.1,
        ..t
    };
    translate(pkt, &Addressing::Flow(to), 0, out)?;
    Ok(to)
}

/// SNAT in place: new source address and port / echo ID (same family). Returns the new tuple.
pub fn snat_in_place(pkt: &mut [u8], src: IpAddr, sport: u16) -> Result<FlowTuple> {
    let Addressing::Flow(t) = parse(pkt)?.addressing else {
        return Err(TranslateError::Mismatch("ICMP error is not a flow"));
    };
    let to = FlowTuple { src, sport, ..t };
    rewrite_in_place(pkt, &Addressing::Flow(to))?;
    Ok(to)
}

/// De-SNAT in place: new destination address and port / echo ID (same family).
pub fn desnat_in_place(pkt: &mut [u8], dst: IpAddr, dport: u16) -> Result<FlowTuple> {
    let Addressing::Flow(t) = parse(pkt)?.addressing else {
        return Err(TranslateError::Mismatch("ICMP error is not a flow"));
    };
    let to = FlowTuple { dst, dport, ..t };
    rewrite_in_place(pkt, &Addressing::Flow(to))?;
    Ok(to)
}

// ---------------------------------------------------------------------------------------------
// Forwarding helpers.

/// Decrements the IPv4 TTL (incremental header checksum) or IPv6 hop limit. Returns `false`,
/// leaving the packet alone, when it would reach zero (send "time exceeded" instead).
pub fn decrement_ttl(pkt: &mut [u8]) -> Result<bool> {
    match rd8(pkt, 0)? >> 4 {
        4 => {
            if pkt.len() < IPV4_HEADER_LEN {
                return Err(TranslateError::Truncated);
            }
            let (ttl, proto) = (rd8(pkt, 8)?, rd8(pkt, 9)?);
            if ttl <= 1 {
                return Ok(false);
            }
            wr8(pkt, 8, ttl - 1)?;
            let c = rd16(pkt, 10)?;
            let old = u16::from_be_bytes([ttl, proto]);
            let new = u16::from_be_bytes([ttl - 1, proto]);
            wr16(pkt, 10, ck::update16(c, old, new))?;
            Ok(true)
        }
        6 => {
            if pkt.len() < IPV6_HEADER_LEN {
                return Err(TranslateError::Truncated);
            }
            let hop = rd8(pkt, 7)?;
            if hop <= 1 {
                return Ok(false);
            }
            wr8(pkt, 7, hop - 1)?;
            Ok(true)
        }
        _ => Err(TranslateError::BadVersion),
    }
}

/// Builds into `out` an ICMP error from `from` about `orig` (sent back to its source), of the
/// family of `orig`: `typ`/`code`/`rest` are ICMPv4 or ICMPv6 values accordingly (e.g. IPv4
/// fragmentation needed: 3/4 with the MTU in `rest[2..4]`; ICMPv6 packet too big: 2/0 with the
/// MTU in `rest`). Refuses to answer ICMP errors, fragments and malformed packets.
pub fn icmp_error(
    orig: &[u8],
    from: IpAddr,
    typ: u8,
    code: u8,
    rest: [u8; 4],
    out: &mut Vec<u8>,
) -> Result<()> {
    out.clear();
    let ip = parse_ip(orig, false)?;
    if is_icmp(ip.proto) {
        if let L4Kind::Error { .. } = parse_l4(&ip, l4_slice(orig, &ip), false)? {
            return Err(TranslateError::Mismatch("no ICMP errors about ICMP errors"));
        }
    }
    if from.is_ipv6() != ip.v6 {
        return Err(TranslateError::Mismatch("address family differs"));
    }
    let (hdr_len, max) = if ip.v6 {
        (IPV6_HEADER_LEN, ICMPV6_ERROR_MAX)
    } else {
        (IPV4_HEADER_LEN, ICMPV4_ERROR_MAX)
    };
    let quote_len = ip.len.min(max - hdr_len - 8);
    let icmp_len = 8 + quote_len;
    let proto = if ip.v6 { IPPROTO_ICMPV6 } else { IPPROTO_ICMP };
    if ip.v6 {
        push_ipv6_header(out, 0, icmp_len, proto, 64, v6(&from)?, v6(&ip.src)?)?;
    } else {
        push_ipv4_header(
            out,
            0,
            hdr_len + icmp_len,
            0,
            64,
            proto,
            v4(&from)?,
            v4(&ip.src)?,
        )?;
    }
    out.extend_from_slice(&[typ, code, 0, 0]);
    out.extend_from_slice(&rest);
    out.extend_from_slice(&orig[..quote_len]);
    write_icmp_checksum(&mut out[hdr_len..], ip.v6, &from, &ip.src)
}

#[cfg(test)]
pub(crate) mod tests;
