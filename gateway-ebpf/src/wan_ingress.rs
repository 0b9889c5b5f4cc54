//! `wan_ingress`: XDP program on the endpoint-facing interface that drops datagrams to the
//! tunnel's UDP listen port unless they look like WireGuard messages (type 1..=4, zero reserved
//! bytes, the length the type requires), counting every verdict per reason.
//!
//! Everything not addressed to the listen port is passed untouched (and counted as
//! `OtherPassed`). Configuration comes from `CONFIG[0]`; until userspace sets
//! `WAN_FLAG_ENABLED` there, the program passes everything without counting.

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use gateway_common::{
    classify_wg_payload,
    wan::{WAN_FLAG_ENABLED, WAN_FLAG_STRICT_DATA_PADDING},
    WanConfig, WanCounter,
};

use crate::helpers::{
    has_bytes, ptr_at, EthHdr, Ipv4Hdr, Ipv6FragHdr, Ipv6Hdr, UdpHdr, VlanHdr, ETH_HDR_LEN,
    ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_FRAGMENT, IPPROTO_UDP,
    IPV6_FRAG_HDR_LEN, IPV6_HDR_LEN, UDP_HDR_LEN, VLAN_HDR_LEN,
};

#[map]
static CONFIG: Array<WanConfig> = Array::with_max_entries(1, 0);

#[map]
static WAN_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(WanCounter::COUNT, 0);

#[xdp]
pub fn wan_ingress(ctx: XdpContext) -> u32 {
    let Some(cfg) = CONFIG.get(0) else {
        return xdp_action::XDP_PASS;
    };
    let cfg = *cfg;
    if !cfg.has_flag(WAN_FLAG_ENABLED) {
        return xdp_action::XDP_PASS;
    }
    let verdict = classify(&ctx, &cfg);
    count(verdict);
    if verdict.is_pass() {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

#[inline(always)]
fn count(counter: WanCounter) {
    if let Some(slot) = WAN_COUNTERS.get_ptr_mut(counter.index()) {
        // SAFETY: `slot` is the non-null pointer the kernel returned for an existing element, to
        // this CPU's copy of the value; BPF programs run with migration disabled, so no other
        // CPU writes it. (On PREEMPT_RT another program on this CPU could interleave and lose
        // an increment; these are statistics.)
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn classify(ctx: &XdpContext, cfg: &WanConfig) -> WanCounter {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return WanCounter::OtherPassed;
    };
    // SAFETY: `ptr_at` checked that the header lies inside the packet; `EthHdr` has alignment 1.
    let mut ether_type = unsafe { (*eth).ether_type };
    let mut off = ETH_HDR_LEN;

    // Up to two VLAN tags (802.1ad outer + 802.1Q inner), unrolled for the verifier.
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let Some(vlan) = ptr_at::<VlanHdr>(ctx, off) else {
            return WanCounter::OtherPassed;
        };
        // SAFETY: bounds checked by `ptr_at`; `VlanHdr` has alignment 1.
        ether_type = unsafe { (*vlan).ether_type };
        off += VLAN_HDR_LEN;
        if ether_type == ETH_P_8021Q {
            let Some(vlan) = ptr_at::<VlanHdr>(ctx, off) else {
                return WanCounter::OtherPassed;
            };
            // SAFETY: bounds checked by `ptr_at`; `VlanHdr` has alignment 1.
            ether_type = unsafe { (*vlan).ether_type };
            off += VLAN_HDR_LEN;
        }
    }

    if ether_type == ETH_P_IPV4 {
        classify_ipv4(ctx, cfg, off)
    } else if ether_type == ETH_P_IPV6 {
        classify_ipv6(ctx, cfg, off)
    } else {
        WanCounter::OtherPassed
    }
}

#[inline(always)]
fn classify_ipv4(ctx: &XdpContext, cfg: &WanConfig, off: usize) -> WanCounter {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, off) else {
        return WanCounter::OtherPassed;
    };
    // SAFETY: bounds checked by `ptr_at`; `Ipv4Hdr` has alignment 1.
    let (version_ihl, protocol, frag_off) =
        unsafe { ((*ip).version_ihl, (*ip).protocol, (*ip).frag_off) };
    if version_ihl >> 4 != 4 || protocol != IPPROTO_UDP {
        return WanCounter::OtherPassed;
    }
    let ihl = (version_ihl & 0x0f) as usize;
    if ihl < 5 {
        // Not a valid header; the kernel drops it.
        return WanCounter::OtherPassed;
    }
    // Non-first fragments carry no UDP header: we cannot tell the port.
    if frag_off[0] & 0x1f != 0 || frag_off[1] != 0 {
        return WanCounter::OtherPassed;
    }
    let first_fragment = frag_off[0] & 0x20 != 0;
    classify_udp(ctx, cfg, off + ihl * 4, first_fragment)
}

#[inline(always)]
fn classify_ipv6(ctx: &XdpContext, cfg: &WanConfig, off: usize) -> WanCounter {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, off) else {
        return WanCounter::OtherPassed;
    };
    // SAFETY: bounds checked by `ptr_at`; `Ipv6Hdr` has alignment 1.
    let (version, next_hdr) = unsafe { ((*ip).version_tc_flow[0] >> 4, (*ip).next_hdr) };
    if version != 6 {
        return WanCounter::OtherPassed;
    }
    let off = off + IPV6_HDR_LEN;
    if next_hdr == IPPROTO_UDP {
        return classify_udp(ctx, cfg, off, false);
    }
    // A fragment header directly after the fixed header (what a sending host produces); other
    // extension headers are not parsed and such packets are passed.
    if next_hdr != IPPROTO_FRAGMENT {
        return WanCounter::OtherPassed;
    }
    let Some(frag) = ptr_at::<Ipv6FragHdr>(ctx, off) else {
        return WanCounter::OtherPassed;
    };
    // SAFETY: bounds checked by `ptr_at`; `Ipv6FragHdr` has alignment 1.
    let (next_hdr, frag_off) = unsafe { ((*frag).next_hdr, (*frag).frag_off) };
    // Only the first fragment (offset 0) carries the UDP header.
    if next_hdr != IPPROTO_UDP || frag_off[0] != 0 || frag_off[1] & 0xf8 != 0 {
        return WanCounter::OtherPassed;
    }
    classify_udp(ctx, cfg, off + IPV6_FRAG_HDR_LEN, true)
}

/// Classifies the UDP datagram at `off`. For a first fragment (`first_fragment`), the UDP
/// length field describes the whole datagram, which is not all here: the WireGuard header and
/// that length are checked, and a datagram that would pass is counted as `PassFragment` (the
/// kernel reassembles it, so the socket sees exactly what was checked).
#[inline(always)]
fn classify_udp(ctx: &XdpContext, cfg: &WanConfig, off: usize, first_fragment: bool) -> WanCounter {
    let Some(udp) = ptr_at::<UdpHdr>(ctx, off) else {
        return WanCounter::OtherPassed;
    };
    // SAFETY: bounds checked by `ptr_at`; `UdpHdr` has alignment 1.
    let (dst_port, udp_len) = unsafe { ((*udp).dst_port, (*udp).len) };
    if dst_port != cfg.port {
        return WanCounter::OtherPassed;
    }
    let udp_len = u16::from_be_bytes(udp_len) as usize;
    if udp_len < UDP_HDR_LEN || (!first_fragment && !has_bytes(ctx, off, udp_len)) {
        return WanCounter::DropMalformed;
    }
    let payload_len = (udp_len - UDP_HDR_LEN) as u32;
    let header = if payload_len >= 8 {
        let Some(h) = ptr_at::<[u8; 8]>(ctx, off + UDP_HDR_LEN) else {
            // Only possible for a (bogus) first fragment that ends inside the header.
            return WanCounter::DropMalformed;
        };
        // SAFETY: bounds checked by `ptr_at`; `[u8; 8]` has alignment 1.
        unsafe { *h }
    } else {
        [0; 8]
    };
    let verdict = classify_wg_payload(
        header,
        payload_len,
        cfg.has_flag(WAN_FLAG_STRICT_DATA_PADDING),
    );
    if first_fragment && verdict.is_pass() {
        WanCounter::PassFragment
    } else {
        verdict
    }
}
