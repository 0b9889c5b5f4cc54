//! The `virtio_net_hdr` that prefixes every packet on a TUN device opened with
//! `IFF_VNET_HDR`: it carries the GSO type and segment size of super-packets and where a
//! partial checksum must be completed.

/// Size of `struct virtio_net_hdr` (no `num_buffers`), the TUN default.
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` holds only the
/// pseudo-header sum and must be completed over the data from `csum_start`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksums are known to be good.
pub const F_DATA_VALID: u8 = 2;

/// GSO type of a packet on the TUN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoType {
    /// A single packet.
    None,
    /// TCP over IPv4, to be cut into `gso_size` payloads.
    TcpV4,
    /// TCP over IPv6.
    TcpV6,
    /// UDP (USO), to be cut into `gso_size` datagrams.
    UdpL4,
}

const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_UDP: u8 = 3;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;

/// A parsed `virtio_net_hdr` (little-endian on the wire, as the TUN default is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_NEEDS_CSUM` / `F_DATA_VALID`.
    pub flags: u8,
    /// Segmentation requested.
    pub gso_type: GsoType,
    /// Whether the ECN bit of the GSO type was set.
    pub ecn: bool,
    /// Length of the headers (IP + transport), a hint.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts (offset of the transport header).
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

/// Why a virtio header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VnetError {
    /// Shorter than the header.
    TooShort,
    /// A GSO type we do not handle (e.g. legacy UFO).
    UnsupportedGso(u8),
}

impl VnetHdr {
    /// A header for a plain packet that needs no work.
    pub const PLAIN: VnetHdr = VnetHdr {
        flags: 0,
        gso_type: GsoType::None,
        ecn: false,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Parses the first [`VNET_HDR_LEN`] bytes of `b`.
    pub fn parse(b: &[u8]) -> Result<VnetHdr, VnetError> {
        let h = b.get(..VNET_HDR_LEN).ok_or(VnetError::TooShort)?;
        let le = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
        let gso_type = match h[1] & !GSO_ECN {
            GSO_NONE => GsoType::None,
            GSO_TCPV4 => GsoType::TcpV4,
            GSO_TCPV6 => GsoType::TcpV6,
            GSO_UDP_L4 => GsoType::UdpL4,
            other => return Err(VnetError::UnsupportedGso(other)),
        };
        Ok(VnetHdr {
            flags: h[0],
            gso_type,
            ecn: h[1] & GSO_ECN != 0,
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        })
    }

    /// Writes the header into the first [`VNET_HDR_LEN`] bytes of `b`.
    pub fn write(&self, b: &mut [u8; VNET_HDR_LEN]) {
        let gso = match self.gso_type {
            GsoType::None => GSO_NONE,
            GsoType::TcpV4 => GSO_TCPV4,
            GsoType::TcpV6 => GSO_TCPV6,
            GsoType::UdpL4 => GSO_UDP_L4,
        } | if self.ecn { GSO_ECN } else { 0 };
        b[0] = self.flags;
        b[1] = gso;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
}

/// Legacy UFO is never requested: TUNSETOFFLOAD does not offer it.
const _: () = assert!(GSO_UDP == 3);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GsoType::TcpV6,
            ecn: true,
            hdr_len: 60,
            gso_size: 1208,
            csum_start: 40,
            csum_offset: 16,
        };
        let mut b = [0u8; VNET_HDR_LEN];
        h.write(&mut b);
        assert_eq!(VnetHdr::parse(&b), Ok(h));
        assert_eq!(VnetHdr::parse(&b[..9]), Err(VnetError::TooShort));
        b[1] = GSO_UDP;
        assert_eq!(VnetHdr::parse(&b), Err(VnetError::UnsupportedGso(GSO_UDP)));
    }
}
