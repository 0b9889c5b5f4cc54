//! TUN offloads: segmenting TSO/USO super-packets read from the TUN device, and coalescing
//! received TCP segments into super-packets written back to it (userspace GSO/GRO).

pub mod coalesce;
pub mod headers;
pub mod segment;
pub mod vnet;

use std::ops::Range;

pub use coalesce::Coalescer;
pub use segment::{segment, SegmentError};
pub use vnet::{GsoType, VnetHdr, VNET_HDR_LEN};

/// Packets stored back to back in one buffer, reused from batch to batch.
pub struct PacketBatch {
    buf: Vec<u8>,
    spans: Vec<Range<usize>>,
    max_packets: usize,
}

impl PacketBatch {
    /// Room for `bytes` of packets, at most `max_packets` of them.
    pub fn new(bytes: usize, max_packets: usize) -> Self {
        PacketBatch {
            buf: vec![0; bytes],
            spans: Vec::with_capacity(max_packets),
            max_packets,
        }
    }

    /// Forgets all packets, keeping the memory.
    pub fn clear(&mut self) {
        self.spans.clear();
    }

    /// Number of packets.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when the batch holds no packet.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    fn next_offset(&self) -> usize {
        self.spans.last().map_or(0, |r| r.end)
    }

    /// Reserves `len` bytes for a new packet and returns them, or `None` when full.
    pub fn push_with_len(&mut self, len: usize) -> Option<&mut [u8]> {
        let start = self.next_offset();
        if self.spans.len() >= self.max_packets || start + len > self.buf.len() {
            return None;
        }
        self.spans.push(start..start + len);
        Some(&mut self.buf[start..start + len])
    }

    /// Appends a copy of `packet`.
    pub fn push_copy(&mut self, packet: &[u8]) -> Option<&mut [u8]> {
        let dst = self.push_with_len(packet.len())?;
        dst.copy_from_slice(packet);
        Some(dst)
    }

    /// Free space after the last packet, for writing a packet of not yet known length;
    /// [`PacketBatch::commit`] then records it.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.spans.len() >= self.max_packets {
            return &mut [];
        }
        let start = self.next_offset();
        &mut self.buf[start..]
    }

    /// Records the first `len` bytes of [`PacketBatch::spare`] as a packet.
    pub fn commit(&mut self, len: usize) {
        let start = self.next_offset();
        debug_assert!(start + len <= self.buf.len());
        self.spans.push(start..start + len);
    }

    /// Packet `i`.
    pub fn get(&self, i: usize) -> &[u8] {
        &self.buf[self.spans[i].clone()]
    }

    /// Length of packet `i`.
    pub fn len_of(&self, i: usize) -> usize {
        self.spans[i].len()
    }

    /// Packets `range` as one contiguous byte slice (they are stored back to back).
    pub fn contiguous(&self, range: Range<usize>) -> &[u8] {
        match (
            self.spans.get(range.start),
            range.end.checked_sub(1).and_then(|l| self.spans.get(l)),
        ) {
            (Some(first), Some(last)) if range.start < range.end => {
                &self.buf[first.start..last.end]
            }
            _ => &[],
        }
    }

    /// All packets in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.spans.iter().map(|r| &self.buf[r.clone()])
    }
}

#[cfg(test)]
mod tests;
