//! Packet access and header layouts for XDP programs.
//!
//! Header structs are `#[repr(C)]` with byte-array fields only, so they have alignment 1 and can
//! be read at any offset (an IPv4 header behind an Ethernet header is only 2-byte aligned).

use aya_ebpf::programs::XdpContext;

pub const ETH_HDR_LEN: usize = 14;
pub const VLAN_HDR_LEN: usize = 4;
pub const IPV6_HDR_LEN: usize = 40;
pub const IPV6_FRAG_HDR_LEN: usize = 8;
pub const UDP_HDR_LEN: usize = 8;

pub const ETH_P_IPV4: [u8; 2] = 0x0800u16.to_be_bytes();
pub const ETH_P_IPV6: [u8; 2] = 0x86ddu16.to_be_bytes();
pub const ETH_P_8021Q: [u8; 2] = 0x8100u16.to_be_bytes();
pub const ETH_P_8021AD: [u8; 2] = 0x88a8u16.to_be_bytes();
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_FRAGMENT: u8 = 44;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}

#[repr(C)]
pub struct VlanHdr {
    pub tci: [u8; 2],
    pub ether_type: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    pub version_tc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

#[repr(C)]
pub struct Ipv6FragHdr {
    pub next_hdr: u8,
    pub reserved: u8,
    /// Fragment offset (13 bits, in 8-byte units), 2 reserved bits, M flag.
    pub frag_off: [u8; 2],
    pub id: [u8; 4],
}

#[repr(C)]
pub struct UdpHdr {
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

/// Returns a pointer to a `T` at `offset` bytes into the packet if the whole `T` lies before
/// `data_end`. The comparison is written as `data + offset + size > data_end` so that the
/// verifier learns the accessible range of the returned packet pointer.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Whether the packet extends at least `len` bytes past `offset` (no access is made).
#[inline(always)]
pub fn has_bytes(ctx: &XdpContext, offset: usize, len: usize) -> bool {
    ctx.data() + offset + len <= ctx.data_end()
}
