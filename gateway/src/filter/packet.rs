//! The few fields of an IP packet the filter decides on, read without trusting anything.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IPv6 extension headers walked to find the transport header (at most this many).
const MAX_EXTENSIONS: usize = 8;

/// What kind of ICMP message a packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpKind {
    /// Echo request with this identifier.
    EchoRequest(u16),
    /// Echo reply with this identifier.
    EchoReply(u16),
    /// Destination unreachable, packet too big, time exceeded, parameter problem.
    Error,
    /// Anything else.
    Other,
}

/// A packet's addressing as the filter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    /// IP protocol number of the transport header.
    pub proto: u8,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (TCP, UDP, SCTP), else 0.
    pub sport: u16,
    /// Destination port (TCP, UDP, SCTP), else 0.
    pub dport: u16,
    /// For ICMP and ICMPv6.
    pub icmp: Option<IcmpKind>,
    /// A fragment after the first: no transport header to look at.
    pub later_fragment: bool,
}

/// Why a packet could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than its headers.
    Truncated,
    /// Not IPv4 or IPv6, or a bad header length.
    BadHeader,
}

fn be16(b: &[u8], at: usize) -> Result<u16, Malformed> {
    b.get(at..at + 2)
        .map(|s| u16::from_be_bytes([s[0], s[1]]))
        .ok_or(Malformed::Truncated)
}

/// Reads the addressing of an IPv4 or IPv6 packet.
pub fn parse(pkt: &[u8]) -> Result<PacketInfo, Malformed> {
    let first = *pkt.first().ok_or(Malformed::Truncated)?;
    let (proto, src, dst, l4_at, later_fragment) = match first >> 4 {
        4 => {
            let ihl = usize::from(first & 0x0f) * 4;
            if ihl < 20 {
                return Err(Malformed::BadHeader);
            }
            if pkt.len() < ihl {
                return Err(Malformed::Truncated);
            }
            let frag_offset = be16(pkt, 6)? & 0x1fff;
            let src: [u8; 4] = pkt[12..16].try_into().map_err(|_| Malformed::Truncated)?;
            let dst: [u8; 4] = pkt[16..20].try_into().map_err(|_| Malformed::Truncated)?;
            (
                pkt[9],
                IpAddr::V4(Ipv4Addr::from(src)),
                IpAddr::V4(Ipv4Addr::from(dst)),
                ihl,
                frag_offset != 0,
            )
        }
        6 => {
            if pkt.len() < 40 {
                return Err(Malformed::Truncated);
            }
            let src: [u8; 16] = pkt[8..24].try_into().map_err(|_| Malformed::Truncated)?;
            let dst: [u8; 16] = pkt[24..40].try_into().map_err(|_| Malformed::Truncated)?;
            let (mut next, mut at, mut later) = (pkt[6], 40usize, false);
            for _ in 0..MAX_EXTENSIONS {
                match next {
                    // Hop-by-hop, routing, destination options.
                    0 | 43 | 60 => {
                        let len = usize::from(*pkt.get(at + 1).ok_or(Malformed::Truncated)?);
                        next = pkt[at];
                        at += (len + 1) * 8;
                    }
                    // Fragment.
                    44 => {
                        let offset = be16(pkt, at + 2)? >> 3;
                        later = offset != 0;
                        next = pkt[at];
                        at += 8;
                    }
                    _ => break,
                }
            }
            (
                next,
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
                at,
                later,
            )
        }
        _ => return Err(Malformed::BadHeader),
    };
    let mut info = PacketInfo {
        proto,
        src,
        dst,
        sport: 0,
        dport: 0,
        icmp: None,
        later_fragment,
    };
    if later_fragment {
        return Ok(info);
    }
    let l4 = pkt.get(l4_at..).ok_or(Malformed::Truncated)?;
    match proto {
        6 | 17 | 132 => {
            info.sport = be16(l4, 0)?;
            info.dport = be16(l4, 2)?;
        }
        1 | 58 => {
            let kind = *l4.first().ok_or(Malformed::Truncated)?;
            let id = || be16(l4, 4);
            info.icmp = Some(match (proto, kind) {
                (1, 8) | (58, 128) => IcmpKind::EchoRequest(id()?),
                (1, 0) | (58, 129) => IcmpKind::EchoReply(id()?),
                (1, 3 | 11 | 12) | (58, 1..=4) => IcmpKind::Error,
                _ => IcmpKind::Other,
            });
        }
        _ => {}
    }
    Ok(info)
}

/// Test packet builders, shared by the filter's tests.
#[cfg(test)]
pub(crate) mod build {
    /// An IPv4 header (20 bytes, total length set) + `l4`.
    pub fn v4(proto: u8, src: [u8; 4], dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(l4);
        let len = p.len() as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p
    }
}

#[cfg(test)]
mod tests {
    use super::build::v4;
    use super::*;

    #[test]
    fn reads_ports_and_icmp() {
        let tcp = v4(
            6,
            [100, 64, 0, 1],
            [10, 0, 0, 5],
            &[0x30, 0x39, 0, 22, 0, 0, 0, 0],
        );
        let i = parse(&tcp).unwrap();
        assert_eq!((i.proto, i.sport, i.dport), (6, 12345, 22));
        let echo = v4(
            1,
            [1, 1, 1, 1],
            [2, 2, 2, 2],
            &[8, 0, 0, 0, 0x12, 0x34, 0, 1],
        );
        assert_eq!(
            parse(&echo).unwrap().icmp,
            Some(IcmpKind::EchoRequest(0x1234))
        );
        let unreach = v4(1, [1, 1, 1, 1], [2, 2, 2, 2], &[3, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(parse(&unreach).unwrap().icmp, Some(IcmpKind::Error));
        let mut frag = tcp.clone();
        frag[6] = 0x00;
        frag[7] = 0x10;
        assert!(parse(&frag).unwrap().later_fragment);
    }

    #[test]
    fn ipv6_with_extension_headers() {
        let mut p = vec![0x60, 0, 0, 0, 0, 16, 0, 64];
        p.extend_from_slice(&[0xfd; 16]);
        p.extend_from_slice(&[0xfe; 16]);
        // Hop-by-hop (8 bytes) then UDP.
        p.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(&[0, 53, 0x1f, 0x90, 0, 8, 0, 0]);
        let i = parse(&p).unwrap();
        assert_eq!((i.proto, i.sport, i.dport), (17, 53, 8080));
    }

    #[test]
    fn junk_is_an_error() {
        assert_eq!(parse(&[]), Err(Malformed::Truncated));
        assert_eq!(parse(&[0x45, 0, 0]), Err(Malformed::Truncated));
        assert_eq!(parse(&[0x41; 30]), Err(Malformed::BadHeader));
        assert_eq!(parse(&[0x20; 30]), Err(Malformed::BadHeader));
        let short_tcp = v4(6, [1; 4], [2; 4], &[0, 1]);
        assert_eq!(parse(&short_tcp), Err(Malformed::Truncated));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..120)) {
            let _ = parse(&bytes);
        }
    }
}
