//! AF_XDP sockets in plain Rust over `libc`: a UMEM of fixed-size frames shared with the
//! kernel, its fill and completion rings, and the socket's RX and TX rings, bound to one
//! receive queue of one interface.
//!
//! An XDP program hands packets to a socket with `bpf_redirect_map` on an XSK map (as
//! `lan_return` does for de-NATed replies, see [`crate::xdp::XdpForward::register_xsk`]);
//! [`XdpSocket::recv_batch`] then reads whole Ethernet frames out of the UMEM without a copy.
//!
//! - [`ring`]: index arithmetic of the single-producer / single-consumer rings (pure) and the
//!   mmap'd rings with their Acquire/Release producer and consumer indices.
//! - [`mmap`]: owned memory mappings, unmapped on drop.
//! - [`umem`]: the frame area and its geometry.
//! - [`socket`]: the socket: set-up, bind, receive, transmit, poll and statistics.

pub mod mmap;
pub mod ring;
pub mod socket;
pub mod umem;

pub use socket::{XdpSocket, XdpSocketConfig, XdpSocketStats};
pub use umem::Umem;

/// Length of an Ethernet header (no VLAN tag): what [`strip_ethernet`] removes.
pub const ETHERNET_HEADER_LEN: usize = 14;

/// The IP packet inside an Ethernet frame (IPv4 or IPv6 ethertype), as it would be read from a
/// TUN device; `None` for other ethertypes and truncated frames.
pub fn strip_ethernet(frame: &[u8]) -> Option<&[u8]> {
    if frame.len() <= ETHERNET_HEADER_LEN {
        return None;
    }
    match [frame[12], frame[13]] {
        [0x08, 0x00] | [0x86, 0xdd] => Some(&frame[ETHERNET_HEADER_LEN..]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_ip_ethertypes_only() {
        let mut frame = [0u8; 34];
        frame[12] = 0x08;
        frame[14] = 0x45;
        assert_eq!(strip_ethernet(&frame).map(|p| p[0]), Some(0x45));
        frame[12] = 0x86;
        frame[13] = 0xdd;
        assert_eq!(strip_ethernet(&frame).map(<[u8]>::len), Some(20));
        frame[13] = 0x06;
        assert_eq!(strip_ethernet(&frame), None);
        assert_eq!(strip_ethernet(&frame[..14]), None);
    }
}
