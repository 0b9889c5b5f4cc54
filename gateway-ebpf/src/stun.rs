//! `stun_responder`: XDP program that answers STUN binding requests (RFC 5389) to the
//! configured UDP port with `XDP_TX`, without waking userspace.
//!
//! The request frame is turned into the binding success response in place: MAC addresses, IP
//! addresses and UDP ports swapped, TTL / hop limit reset to 64, the frame resized with
//! `bpf_xdp_adjust_tail` to hold XOR-MAPPED-ADDRESS and FINGERPRINT, IPv4 header and UDP
//! checksums computed (both families). Only requests with no attribute or a lone, correct
//! FINGERPRINT are answered; anything else (other attributes, junk, IPv4 options, fragments,
//! VLAN tags, IPv6 extension headers) is passed to the kernel, where the userspace STUN server
//! answers or counts it. Configuration comes from `STUN_CONFIG[0]`; until userspace sets
//! `STUN_FLAG_ENABLED` there, every packet is passed uncounted.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_tail,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use gateway_common::stun::{
    binding_success_v4, binding_success_v6, crc32, STUN_ATTR_FINGERPRINT, STUN_BINDING_REQUEST,
    STUN_COOKIE, STUN_FINGERPRINT_XOR, STUN_FLAG_ENABLED, STUN_RESPONSE_V4_LEN,
    STUN_RESPONSE_V6_LEN,
};
use gateway_common::{StunConfig, StunCounter};

use crate::fwd::{fold, packet_len, read, write, EthHdr, Ipv4Hdr, UdpHdr};
use crate::helpers::{
    ETH_HDR_LEN, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_UDP, IPV6_HDR_LEN, UDP_HDR_LEN,
};

#[map]
static STUN_CONFIG: Array<StunConfig> = Array::with_max_entries(1, 0);

#[map]
static STUN_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(StunCounter::COUNT, 0);

/// STUN header length.
const STUN_HDR_LEN: usize = 20;
/// TTL / hop limit of the answers.
const REPLY_TTL: u8 = 64;
/// IPv4 header without options.
const IPV4_HDR_LEN: usize = 20;
/// Offsets of the UDP header and payload for IPv4 (no options) and IPv6 (no extension header).
const V4_UDP: usize = ETH_HDR_LEN + IPV4_HDR_LEN;
const V6_UDP: usize = ETH_HDR_LEN + IPV6_HDR_LEN;

#[xdp]
pub fn stun_responder(ctx: XdpContext) -> u32 {
    let Some(cfg) = STUN_CONFIG.get(0) else {
        return xdp_action::XDP_PASS;
    };
    let cfg = *cfg;
    if !cfg.has_flag(STUN_FLAG_ENABLED) {
        return xdp_action::XDP_PASS;
    }
    let counter = respond(&ctx, cfg.port);
    count(counter);
    match counter {
        StunCounter::AnsweredV4 | StunCounter::AnsweredV6 => xdp_action::XDP_TX,
        _ => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn count(counter: StunCounter) {
    if let Some(slot) = STUN_COUNTERS.get_ptr_mut(counter.index()) {
        // SAFETY: `slot` is the non-null pointer the kernel returned for an existing element, to
        // this CPU's copy of the value; BPF programs run with migration disabled, so no other
        // CPU writes it.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn respond(ctx: &XdpContext, port: [u8; 2]) -> StunCounter {
    let Some(eth) = read::<EthHdr>(ctx, 0) else {
        return StunCounter::PassedOther;
    };
    if eth.ether_type == ETH_P_IPV4 {
        respond_v4(ctx, port, eth)
    } else if eth.ether_type == ETH_P_IPV6 {
        respond_v6(ctx, port, eth)
    } else {
        StunCounter::PassedOther
    }
}

/// Checks the STUN message of a datagram whose UDP payload (`payload_len` bytes, all inside
/// the frame) starts at `off`; returns its header if the program may answer it.
#[inline(always)]
fn check_request(
    ctx: &XdpContext,
    off: usize,
    payload_len: usize,
) -> Result<[u8; STUN_HDR_LEN], StunCounter> {
    if payload_len < STUN_HDR_LEN {
        return Err(StunCounter::PassedNotBinding);
    }
    let Some(hdr) = read::<[u8; STUN_HDR_LEN]>(ctx, off) else {
        return Err(StunCounter::PassedNotBinding);
    };
    let msg_type = u16::from_be_bytes([hdr[0], hdr[1]]);
    let msg_len = u16::from_be_bytes([hdr[2], hdr[3]]) as usize;
    let cookie = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    if msg_type != STUN_BINDING_REQUEST
        || cookie != STUN_COOKIE
        || msg_len & 3 != 0
        || msg_len + STUN_HDR_LEN != payload_len
    {
        return Err(StunCounter::PassedNotBinding);
    }
    match msg_len {
        0 => Ok(hdr),
        8 => {
            let Some(fp) = read::<[u8; 8]>(ctx, off + STUN_HDR_LEN) else {
                return Err(StunCounter::PassedNotBinding);
            };
            let attr_type = u16::from_be_bytes([fp[0], fp[1]]);
            let attr_len = u16::from_be_bytes([fp[2], fp[3]]);
            let value = u32::from_be_bytes([fp[4], fp[5], fp[6], fp[7]]);
            if attr_type == STUN_ATTR_FINGERPRINT
                && attr_len == 4
                && value == crc32(&hdr) ^ STUN_FINGERPRINT_XOR
            {
                Ok(hdr)
            } else {
                Err(StunCounter::PassedAttributes)
            }
        }
        _ => Err(StunCounter::PassedAttributes),
    }
}

#[inline(always)]
fn txid_of(hdr: &[u8; STUN_HDR_LEN]) -> [u8; 12] {
    let mut t = [0u8; 12];
    t.copy_from_slice(&hdr[8..20]);
    t
}

/// Resizes the frame to `len` bytes; false if the kernel refuses. Invalidates packet pointers.
#[inline(always)]
fn resize(ctx: &XdpContext, len: usize) -> bool {
    let delta = len as i32 - packet_len(ctx) as i32;
    if delta == 0 {
        return true;
    }
    // SAFETY: `ctx.ctx` is this program's context pointer; the kernel checks the new size
    // against the frame's buffer and fails the call rather than growing past it.
    unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) == 0 }
}

/// Sum of big-endian 16-bit words of `b` (even length), added to `acc`. Not inlined, so that
/// the arrays summed stay in memory instead of becoming one spilled register per byte (which
/// would exceed the 512-byte stack).
#[inline(never)]
fn sum_words(b: &[u8], mut acc: u64) -> u64 {
    let mut i = 0;
    while i + 1 < b.len() {
        acc += u16::from_be_bytes([b[i], b[i + 1]]) as u64;
        i += 2;
    }
    acc
}

/// Swapped Ethernet header.
#[inline(always)]
fn eth_reply(eth: &EthHdr) -> [u8; 14] {
    let mut out = [0u8; 14];
    out[0..6].copy_from_slice(&eth.src);
    out[6..12].copy_from_slice(&eth.dst);
    out[12..14].copy_from_slice(&eth.ether_type);
    out
}

/// UDP header from `src_port` to `dst_port` of length `len` with a zero checksum.
#[inline(always)]
fn udp_header(src_port: [u8; 2], dst_port: [u8; 2], len: u16) -> [u8; 8] {
    let l = len.to_be_bytes();
    [src_port[0], src_port[1], dst_port[0], dst_port[1], l[0], l[1], 0, 0]
}

/// A folded, complemented UDP checksum; 0 is sent as 0xffff (RFC 768).
#[inline(always)]
fn udp_checksum(sum: u64) -> [u8; 2] {
    let c = !fold(sum);
    if c == 0 { 0xffff } else { c }.to_be_bytes()
}

// Not inlined: each family's answer gets its own stack frame.
#[inline(never)]
fn respond_v4(ctx: &XdpContext, port: [u8; 2], eth: EthHdr) -> StunCounter {
    let Some(ip) = read::<Ipv4Hdr>(ctx, ETH_HDR_LEN) else {
        return StunCounter::PassedOther;
    };
    if ip.version_ihl >> 4 != 4 || ip.protocol != IPPROTO_UDP {
        return StunCounter::PassedOther;
    }
    let ihl = (ip.version_ihl & 0x0f) as usize;
    // Non-first fragments carry no UDP header: the port is unknown.
    if ihl < 5 || ip.frag_off[0] & 0x1f != 0 || ip.frag_off[1] != 0 {
        return StunCounter::PassedOther;
    }
    let Some(udp) = read::<UdpHdr>(ctx, ETH_HDR_LEN + ihl * 4) else {
        return StunCounter::PassedOther;
    };
    if udp.dst_port != port {
        return StunCounter::PassedOther;
    }
    // Options or a first fragment (MF set): not rewritten here.
    if ihl != 5 || ip.frag_off[0] & 0x20 != 0 {
        return StunCounter::PassedUnsupported;
    }
    let udp_len = u16::from_be_bytes(udp.len) as usize;
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    if udp_len < UDP_HDR_LEN
        || tot_len != IPV4_HDR_LEN + udp_len
        || packet_len(ctx) < V4_UDP + udp_len
    {
        return StunCounter::PassedNotBinding;
    }
    let hdr = match check_request(ctx, V4_UDP + UDP_HDR_LEN, udp_len - UDP_HDR_LEN) {
        Ok(hdr) => hdr,
        Err(c) => return c,
    };

    let stun = binding_success_v4(&txid_of(&hdr), ip.src, u16::from_be_bytes(udp.src_port));
    let udp_len = (UDP_HDR_LEN + STUN_RESPONSE_V4_LEN) as u16;
    let tot = (IPV4_HDR_LEN as u16 + udp_len).to_be_bytes();
    let mut iph = [
        0x45,
        ip.tos,
        tot[0],
        tot[1],
        ip.id[0],
        ip.id[1],
        ip.frag_off[0],
        ip.frag_off[1],
        REPLY_TTL,
        IPPROTO_UDP,
        0,
        0,
        ip.dst[0],
        ip.dst[1],
        ip.dst[2],
        ip.dst[3],
        ip.src[0],
        ip.src[1],
        ip.src[2],
        ip.src[3],
    ];
    let check = (!fold(sum_words(&iph, 0))).to_be_bytes();
    iph[10] = check[0];
    iph[11] = check[1];
    let mut udph = udp_header(udp.dst_port, udp.src_port, udp_len);
    // Pseudo-header (source, destination, protocol, UDP length), header, payload.
    let pseudo = sum_words(&ip.src, sum_words(&ip.dst, 0)) + IPPROTO_UDP as u64 + udp_len as u64;
    let c = udp_checksum(sum_words(&stun, sum_words(&udph, pseudo)));
    udph[6] = c[0];
    udph[7] = c[1];
    if !resize(ctx, V4_UDP + UDP_HDR_LEN + STUN_RESPONSE_V4_LEN)
        || !write(ctx, 0, eth_reply(&eth))
        || !write(ctx, ETH_HDR_LEN, iph)
        || !write(ctx, V4_UDP, udph)
        || !write(ctx, V4_UDP + UDP_HDR_LEN, stun)
    {
        return StunCounter::PassedTailError;
    }
    StunCounter::AnsweredV4
}

#[inline(never)]
fn respond_v6(ctx: &XdpContext, port: [u8; 2], eth: EthHdr) -> StunCounter {
    // Version, traffic class, flow label, payload length, next header, hop limit.
    let Some(ip) = read::<[u8; 8]>(ctx, ETH_HDR_LEN) else {
        return StunCounter::PassedOther;
    };
    if ip[0] >> 4 != 6 || ip[6] != IPPROTO_UDP {
        return StunCounter::PassedOther;
    }
    let Some(udp) = read::<UdpHdr>(ctx, V6_UDP) else {
        return StunCounter::PassedOther;
    };
    if udp.dst_port != port {
        return StunCounter::PassedOther;
    }
    let udp_len = u16::from_be_bytes(udp.len) as usize;
    let payload_len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    if udp_len < UDP_HDR_LEN || payload_len != udp_len || packet_len(ctx) < V6_UDP + udp_len {
        return StunCounter::PassedNotBinding;
    }
    let hdr = match check_request(ctx, V6_UDP + UDP_HDR_LEN, udp_len - UDP_HDR_LEN) {
        Ok(hdr) => hdr,
        Err(c) => return c,
    };

    let (Some(src), Some(dst)) = (
        read::<[u8; 16]>(ctx, ETH_HDR_LEN + 8),
        read::<[u8; 16]>(ctx, ETH_HDR_LEN + 24),
    ) else {
        return StunCounter::PassedNotBinding;
    };
    let (sport, dport) = (udp.src_port, udp.dst_port);
    let stun = binding_success_v6(&txid_of(&hdr), src, u16::from_be_bytes(sport));
    let udp_len = (UDP_HDR_LEN + STUN_RESPONSE_V6_LEN) as u16;
    let mut udph = udp_header(dport, sport, udp_len);
    let pseudo = sum_words(&src, sum_words(&dst, 0)) + IPPROTO_UDP as u64 + udp_len as u64;
    let c = udp_checksum(sum_words(&stun, sum_words(&udph, pseudo)));
    udph[6] = c[0];
    udph[7] = c[1];
    let l = udp_len.to_be_bytes();
    // The IPv6 header is rewritten in place: version, traffic class and flow label stay.
    if !resize(ctx, V6_UDP + UDP_HDR_LEN + STUN_RESPONSE_V6_LEN)
        || !write(ctx, 0, eth_reply(&eth))
        || !write(ctx, ETH_HDR_LEN + 4, [l[0], l[1], IPPROTO_UDP, REPLY_TTL])
        || !write(ctx, ETH_HDR_LEN + 8, dst)
        || !write(ctx, ETH_HDR_LEN + 24, src)
        || !write(ctx, V6_UDP, udph)
        || !write(ctx, V6_UDP + UDP_HDR_LEN, stun)
    {
        return StunCounter::PassedTailError;
    }
    StunCounter::AnsweredV6
}
