//! Cutting TSO/USO super-packets read from the TUN device into wire-sized packets, and
//! completing partial checksums — what a NIC would do in hardware.

use super::headers::{L4Packet, PROTO_TCP, PROTO_UDP};
use super::vnet::{GsoType, VnetHdr, F_NEEDS_CSUM};
use super::PacketBatch;
use crate::nat::checksum as csum;

/// Why a packet from the TUN could not be segmented (it is dropped and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentError {
    /// The GSO type does not match the packet's headers, or headers are truncated.
    BadHeaders,
    /// `gso_size` is zero.
    ZeroSegmentSize,
    /// The checksum offsets point outside the packet.
    BadChecksumOffsets,
    /// The batch has no room for all segments.
    BatchFull,
}

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Appends the packets that `packet` (as read after its virtio header `hdr`) stands for to
/// `out`: one packet with its checksum completed, or one packet per `gso_size` payload bytes
/// with every header fixed up and full checksums.
pub fn segment(hdr: &VnetHdr, packet: &[u8], out: &mut PacketBatch) -> Result<(), SegmentError> {
    if hdr.gso_type == GsoType::None {
        let p = out.push_copy(packet).ok_or(SegmentError::BatchFull)?;
        if hdr.flags & F_NEEDS_CSUM != 0 {
            complete_partial_checksum(p, hdr)?;
        }
        return Ok(());
    }
    let l4 = L4Packet::parse(packet).ok_or(SegmentError::BadHeaders)?;
    let expected = match hdr.gso_type {
        GsoType::TcpV4 => (4, PROTO_TCP),
        GsoType::TcpV6 => (6, PROTO_TCP),
        GsoType::UdpL4 => (l4.version, PROTO_UDP),
        GsoType::None => unreachable!("handled above"),
    };
    if (l4.version, l4.proto) != expected {
        return Err(SegmentError::BadHeaders);
    }
    let mss = usize::from(hdr.gso_size);
    if mss == 0 {
        return Err(SegmentError::ZeroSegmentSize);
    }
    let headers = &packet[..l4.headers_len()];
    let payload = &packet[l4.headers_len()..];
    let count = payload.len().div_ceil(mss).max(1);
    let first_seq = tcp_seq(headers, &l4);
    let first_id = ipv4_id(headers, &l4);
    for (i, chunk) in payload.chunks(mss).enumerate().take(count) {
        let total = headers.len() + chunk.len();
        let seg = out.push_with_len(total).ok_or(SegmentError::BatchFull)?;
        seg[..headers.len()].copy_from_slice(headers);
        seg[headers.len()..].copy_from_slice(chunk);
        if l4.version == 4 {
            seg[4..6].copy_from_slice(&first_id.wrapping_add(i as u16).to_be_bytes());
        }
        l4.set_ip_length(seg, total);
        if l4.proto == PROTO_TCP {
            let seq = first_seq.wrapping_add((i * mss) as u32);
            seg[l4.ip_len + 4..l4.ip_len + 8].copy_from_slice(&seq.to_be_bytes());
            let flags = &mut seg[l4.ip_len + 13];
            if i + 1 < count {
                *flags &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                *flags &= !TCP_CWR;
            }
        } else {
            let udp_len = (l4.l4_len + chunk.len()) as u16;
            seg[l4.ip_len + 4..l4.ip_len + 6].copy_from_slice(&udp_len.to_be_bytes());
        }
        l4.fill_l4_checksum(seg);
    }
    Ok(())
}

fn tcp_seq(h: &[u8], l4: &L4Packet) -> u32 {
    if l4.proto != PROTO_TCP {
        return 0;
    }
    let o = l4.ip_len + 4;
    u32::from_be_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]])
}

fn ipv4_id(h: &[u8], l4: &L4Packet) -> u16 {
    if l4.version == 4 {
        u16::from_be_bytes([h[4], h[5]])
    } else {
        0
    }
}

/// Completes a checksum the stack left partial: the field holds the pseudo-header sum, and
/// the rest is summed from `csum_start`.
fn complete_partial_checksum(p: &mut [u8], hdr: &VnetHdr) -> Result<(), SegmentError> {
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    if field + 2 > p.len() {
        return Err(SegmentError::BadChecksumOffsets);
    }
    let mut c = !csum::fold(csum::sum(&p[start..], 0));
    let is_udp =
        L4Packet::parse(p).is_some_and(|l| l.proto == PROTO_UDP && l.csum_field() == field);
    if c == 0 && is_udp {
        c = 0xffff;
    }
    p[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}
