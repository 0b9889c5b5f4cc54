//! Just enough IPv4/IPv6/TCP/UDP header parsing for segmentation and coalescing.

use crate::nat::checksum as csum;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// Where the headers of a TCP or UDP packet are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L4Packet {
    /// 4 or 6.
    pub version: u8,
    /// Length of the IP header (IPv4 with options; IPv6 fixed 40, no extension headers).
    pub ip_len: usize,
    /// Transport protocol (TCP or UDP).
    pub proto: u8,
    /// Length of the transport header (TCP with options, UDP 8).
    pub l4_len: usize,
}

impl L4Packet {
    /// Offset of the payload.
    pub fn headers_len(&self) -> usize {
        self.ip_len + self.l4_len
    }

    /// Parses the headers of an IPv4/IPv6 TCP or UDP packet; `None` for anything else
    /// (other protocols, IPv6 extension headers, IPv4 fragments, truncation).
    pub fn parse(p: &[u8]) -> Option<L4Packet> {
        let version = p.first()? >> 4;
        let (ip_len, proto) = match version {
            4 => {
                let ihl = usize::from(p[0] & 0x0f) * 4;
                if ihl < 20 || p.len() < ihl || is_ipv4_fragment(p) {
                    return None;
                }
                (ihl, p[9])
            }
            6 if p.len() >= 40 => (40, p[6]),
            _ => return None,
        };
        let l4_len = match proto {
            PROTO_TCP => usize::from(p.get(ip_len + 12)? >> 4) * 4,
            PROTO_UDP => 8,
            _ => return None,
        };
        if (proto == PROTO_TCP && l4_len < 20) || p.len() < ip_len + l4_len {
            return None;
        }
        Some(L4Packet {
            version,
            ip_len,
            proto,
            l4_len,
        })
    }

    /// Offset of the transport checksum field.
    pub fn csum_field(&self) -> usize {
        self.ip_len + if self.proto == PROTO_TCP { 16 } else { 6 }
    }

    /// Sets the IP length field(s) for a packet of `total` bytes and refreshes the IPv4
    /// header checksum.
    pub fn set_ip_length(&self, p: &mut [u8], total: usize) {
        if self.version == 4 {
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            refresh_ipv4_header_checksum(p, self.ip_len);
        } else {
            p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        }
    }

    /// The pseudo-header sum (addresses, protocol, transport length), unfolded.
    pub fn pseudo_header_sum(&self, p: &[u8], l4_total: usize) -> u64 {
        let addrs = if self.version == 4 {
            &p[12..20]
        } else {
            &p[8..40]
        };
        csum::sum(addrs, u64::from(self.proto) + l4_total as u64)
    }

    /// Computes and stores the full transport checksum (UDP's zero becomes 0xffff).
    pub fn fill_l4_checksum(&self, p: &mut [u8]) {
        let field = self.csum_field();
        p[field..field + 2].copy_from_slice(&[0, 0]);
        let l4 = &p[self.ip_len..];
        let sum = csum::sum(l4, self.pseudo_header_sum(p, l4.len()));
        let mut c = !csum::fold(sum);
        if c == 0 && self.proto == PROTO_UDP {
            c = 0xffff;
        }
        p[field..field + 2].copy_from_slice(&c.to_be_bytes());
    }
}

/// True for an IPv4 packet that is a fragment (MF set or non-zero offset).
pub fn is_ipv4_fragment(p: &[u8]) -> bool {
    p.len() >= 8 && (u16::from_be_bytes([p[6], p[7]]) & 0x3fff) != 0
}

/// Recomputes the IPv4 header checksum over `ihl` bytes.
pub fn refresh_ipv4_header_checksum(p: &mut [u8], ihl: usize) {
    p[10..12].copy_from_slice(&[0, 0]);
    let c = !csum::fold(csum::sum(&p[..ihl], 0));
    p[10..12].copy_from_slice(&c.to_be_bytes());
}
