//! Packet I/O: the TUN device and the WireGuard UDP socket.

pub mod mmsg;
pub mod offload;
pub mod tun;
pub mod udp;
pub mod udp_offload;
