//! Packet I/O: the TUN device and the WireGuard UDP socket.

pub mod tun;
pub mod udp;
