//! Coalescing consecutive TCP segments of a flow into one super-packet for the TUN device
//! (userspace GRO), following the rules of the kernel's `tcp_gro_receive`: same addresses,
//! ports, ACK, window, options and IP fields; contiguous sequence numbers; equal segment sizes
//! except a shorter last one; only ACK/PSH flags; PSH ends a super-packet.

use super::headers::{L4Packet, PROTO_TCP};
use super::vnet::{GsoType, VnetHdr, F_NEEDS_CSUM, VNET_HDR_LEN};
use crate::nat::checksum as csum;

const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
/// Most bytes an IP length field can describe.
const MAX_SUPER_PACKET: usize = 65535;

/// One packet to write to the TUN: where it starts in the buffer and how it can grow.
#[derive(Debug, Clone)]
struct Item {
    /// Offset of the virtio header in the buffer.
    start: usize,
    /// Bytes after the virtio header.
    len: usize,
    /// Set for TCP packets that may still take more segments.
    tcp: Option<L4Packet>,
    /// Payload size of the first segment (the GSO size).
    seg_size: usize,
    /// Segments merged so far.
    segments: usize,
    /// Sequence number the next segment must carry.
    next_seq: u32,
    /// Whether more segments may be appended.
    open: bool,
}

/// Collects decrypted packets and merges TCP segments; [`Coalescer::finish`] yields what to
/// write to a TUN device opened with `IFF_VNET_HDR`, virtio header included.
pub struct Coalescer {
    buf: Vec<u8>,
    items: Vec<Item>,
    max_items: usize,
}

impl Coalescer {
    /// Room for `bytes` of output and at most `max_items` writes.
    pub fn new(bytes: usize, max_items: usize) -> Self {
        Coalescer {
            buf: vec![0; bytes],
            items: Vec::with_capacity(max_items),
            max_items,
        }
    }

    fn used(&self) -> usize {
        self.items
            .last()
            .map_or(0, |i| i.start + VNET_HDR_LEN + i.len)
    }

    /// Number of writes pending.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether a packet of `len` bytes surely fits; if not, [`Coalescer::finish`] first.
    pub fn has_room(&self, len: usize) -> bool {
        self.items.len() < self.max_items && self.used() + VNET_HDR_LEN + len <= self.buf.len()
    }

    /// Adds a packet, merging it into an open super-packet of its flow where the rules allow.
    /// Returns false (and adds nothing) when there is no room.
    pub fn push(&mut self, packet: &[u8]) -> bool {
        self.push_item(packet, true)
    }

    /// Adds a packet that must reach the TUN as it is (never merged with others).
    pub fn push_unmerged(&mut self, packet: &[u8]) -> bool {
        self.push_item(packet, false)
    }

    fn push_item(&mut self, packet: &[u8], merge: bool) -> bool {
        let tcp = L4Packet::parse(packet).filter(|l| merge && l.proto == PROTO_TCP);
        if let Some(l4) = tcp {
            if self.try_append(packet, &l4) {
                return true;
            }
        }
        if !self.has_room(packet.len()) {
            return false;
        }
        let start = self.used();
        let body = start + VNET_HDR_LEN;
        self.buf[body..body + packet.len()].copy_from_slice(packet);
        let (open, seg_size, next_seq) = match tcp {
            Some(l4) => {
                let payload = packet.len() - l4.headers_len();
                let flags = packet[l4.ip_len + 13];
                let mergeable =
                    payload > 0 && flags & !(TCP_ACK | TCP_PSH) == 0 && flags & TCP_PSH == 0;
                (
                    mergeable,
                    payload,
                    seq(packet, &l4).wrapping_add(payload as u32),
                )
            }
            None => (false, 0, 0),
        };
        self.items.push(Item {
            start,
            len: packet.len(),
            tcp,
            seg_size,
            segments: 1,
            next_seq,
            open,
        });
        true
    }

    fn try_append(&mut self, packet: &[u8], l4: &L4Packet) -> bool {
        let payload_len = packet.len() - l4.headers_len();
        let flags = packet[l4.ip_len + 13];
        if payload_len == 0 || flags & !(TCP_ACK | TCP_PSH) != 0 {
            return false;
        }
        // Items are stored back to back, so only the newest one can grow.
        let Some(it) = self.items.last_mut() else {
            return false;
        };
        let head = &self.buf[it.start + VNET_HDR_LEN..];
        if !(it.open && it.tcp.as_ref() == Some(l4) && same_flow(head, packet, l4)) {
            return false;
        }
        let fits = seq(packet, l4) == it.next_seq
            && payload_len <= it.seg_size
            && it.len + payload_len <= MAX_SUPER_PACKET
            && it.start + VNET_HDR_LEN + it.len + payload_len <= self.buf.len();
        if !fits {
            // Out of order or too big: the super-packet so far is complete.
            it.open = false;
            return false;
        }
        let end = it.start + VNET_HDR_LEN + it.len;
        self.buf[end..end + payload_len].copy_from_slice(&packet[l4.headers_len()..]);
        it.len += payload_len;
        it.segments += 1;
        it.next_seq = it.next_seq.wrapping_add(payload_len as u32);
        if flags & TCP_PSH != 0 || payload_len < it.seg_size {
            it.open = false;
            if flags & TCP_PSH != 0 {
                self.buf[it.start + VNET_HDR_LEN + l4.ip_len + 13] |= TCP_PSH;
            }
        }
        true
    }

    /// Finalises the headers of every pending write (virtio header + packet); read them with
    /// [`Coalescer::get`], then [`Coalescer::clear`].
    pub fn finish(&mut self) {
        for it in &self.items {
            let (head, rest) = self.buf[it.start..].split_at_mut(VNET_HDR_LEN);
            let pkt = &mut rest[..it.len];
            let hdr = match (&it.tcp, it.segments) {
                (Some(l4), n) if n > 1 => super_packet_header(pkt, l4, it.seg_size),
                _ => VnetHdr::PLAIN,
            };
            let head: &mut [u8; VNET_HDR_LEN] = head.try_into().expect("split at VNET_HDR_LEN");
            hdr.write(head);
        }
    }

    /// Write `i` (virtio header + packet), valid after [`Coalescer::finish`].
    pub fn get(&self, i: usize) -> &[u8] {
        let it = &self.items[i];
        &self.buf[it.start..it.start + VNET_HDR_LEN + it.len]
    }

    /// Number of packets merged into write `i`.
    pub fn segments(&self, i: usize) -> usize {
        self.items[i].segments
    }

    /// Drops all pending writes.
    pub fn clear(&mut self) {
        self.items.clear();
    }
}

fn seq(p: &[u8], l4: &L4Packet) -> u32 {
    let o = l4.ip_len + 4;
    u32::from_be_bytes([p[o], p[o + 1], p[o + 2], p[o + 3]])
}

/// Whether `p` may join the super-packet whose first segment's headers start `head`.
fn same_flow(head: &[u8], p: &[u8], l4: &L4Packet) -> bool {
    let ip_same = if l4.version == 4 {
        // No options; same TOS, DF, TTL, protocol and addresses.
        l4.ip_len == 20
            && head[1] == p[1]
            && head[6] == p[6]
            && head[8..10] == p[8..10]
            && head[12..20] == p[12..20]
    } else {
        head[..4] == p[..4] && head[6..8] == p[6..8] && head[8..40] == p[8..40]
    };
    let t = l4.ip_len;
    // Ports, ACK number, data offset, window, urgent pointer and options must all match.
    ip_same
        && head[t..t + 4] == p[t..t + 4]
        && head[t + 8..t + 13] == p[t + 8..t + 13]
        && head[t + 14..t + 16] == p[t + 14..t + 16]
        && head[t + 18..l4.headers_len()] == p[t + 18..l4.headers_len()]
}

/// Fixes the IP length and leaves the TCP checksum partial (pseudo-header sum) for the
/// kernel, as `VIRTIO_NET_HDR_F_NEEDS_CSUM` requires.
fn super_packet_header(pkt: &mut [u8], l4: &L4Packet, seg_size: usize) -> VnetHdr {
    l4.set_ip_length(pkt, pkt.len());
    let tcp_len = pkt.len() - l4.ip_len;
    let partial = csum::fold(l4.pseudo_header_sum(pkt, tcp_len));
    let field = l4.csum_field();
    pkt[field..field + 2].copy_from_slice(&partial.to_be_bytes());
    VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: if l4.version == 4 {
            GsoType::TcpV4
        } else {
            GsoType::TcpV6
        },
        ecn: false,
        hdr_len: l4.headers_len() as u16,
        gso_size: seg_size as u16,
        csum_start: l4.ip_len as u16,
        csum_offset: 16,
    }
}
