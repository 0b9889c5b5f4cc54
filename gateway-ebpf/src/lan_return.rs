//! `lan_return`: XDP program on a LAN interface. Replies that match a connection entry of
//! `tun_forward` are de-SNATed (and, for 4via6 connections, translated back to IPv6 from the
//! LAN host's 4via6 address to the client's tailnet address) and passed to the kernel, which
//! routes them into the TUN (the daemon reads and encrypts them). The kernel decrements the TTL
//! when it forwards them, so this program does not.
//!
//! ICMP errors from the LAN (unreachable, time exceeded, fragmentation needed, parameter
//! problem) about packets of a connection are translated the same way, their quoted packet
//! included (ICMPv4 → ICMPv6 for 4via6, from the reporter's 4via6 address), as
//! `nat::engine::inbound` does. Replies that would not fit into the TUN after translation get
//! an ICMP "fragmentation needed" back to the LAN host, quoting the packet as the host sent it
//! (the kernel would quote the translated packet, which the host cannot match). Everything
//! else is passed untouched.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_tail,
    macros::{map, xdp},
    maps::{PerCpuArray, XskMap},
    programs::XdpContext,
};
use gateway_common::forward::{
    ct_last_seen, CtOrigKey, CtReplyKey, CtReplyVal, CtState, FwdConfig, FwdEgress, LanCounter,
    CT_FLAG_VIA6, EGRESS_FLAG_XSK, FWD_FLAG_ENABLED, LAN_XSK_MAX, PROTO_ICMP, PROTO_ICMPV6,
};

use crate::fwd::{
    adjust_head, csum_update, csum_update_partial, egress, eth_bytes, fold, looks_partial, now_ns,
    packet_len, parse_l4, pseudo4, pseudo6, read, scratch, sum4, sum_packet, udp_wire, w16, write,
    EthHdr, Ipv4Hdr, ETH_P_IPV4, ETH_P_IPV6, FWD_CONFIG, FWD_CT_ORIG, FWD_CT_REPLY, L4,
    PARSE_NO_MATCH,
};
use crate::helpers::{ETH_P_8021AD, ETH_P_8021Q};

#[map]
static LAN_RET_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LanCounter::COUNT, 0);

/// AF_XDP sockets by receive queue index, for the LAN interface whose egress entry has
/// `EGRESS_FLAG_XSK`.
#[map]
static LAN_XSKS: XskMap = XskMap::with_max_entries(LAN_XSK_MAX, 0);

const PASS: u32 = xdp_action::XDP_PASS;
const DROP: u32 = xdp_action::XDP_DROP;
const L3: usize = 14;

#[xdp]
pub fn lan_return(ctx: XdpContext) -> u32 {
    let Some(cfg) = FWD_CONFIG.get(0) else {
        return PASS;
    };
    if !cfg.has_flag(FWD_FLAG_ENABLED) {
        return PASS;
    }
    // Two BPF subprograms (separate stack frames): ICMP errors and everything else.
    let v = if is_icmp_error(&ctx) {
        match icmp_error_lookup(&ctx, cfg) {
            ICMP_GO_V4 => icmp_error_v4(&ctx),
            ICMP_GO_VIA6 => icmp_error_via6(&ctx),
            v => v,
        }
    } else {
        flow_return(&ctx, cfg)
    };
    let (action, counter) = (v & 0xff, (v >> 8) & 0xff);
    count_index(counter);
    if action == PASS && v & KERNEL_ONLY == 0 && is_returned(counter) {
        return to_socket(&ctx, v);
    }
    action
}

/// Whether a counter index is one of the verdicts that hand a packet to the tunnel path.
#[inline(always)]
fn is_returned(counter: u32) -> bool {
    counter == LanCounter::ReturnedV4.index()
        || counter == LanCounter::ReturnedVia6.index()
        || counter == LanCounter::ReturnedIcmpError.index()
}

/// Redirects a returned packet to the AF_XDP socket of its receive queue when the interface it
/// arrived on owns the sockets and one is registered for that queue; otherwise the kernel
/// takes it (`XDP_PASS`), as without sockets. `v` is the verdict: [`EGRESS_CHECKED`] saves
/// looking the interface up again.
#[inline(always)]
fn to_socket(ctx: &XdpContext, v: u32) -> u32 {
    // SAFETY: `ctx.ctx` points to this invocation's `xdp_md`.
    let (ingress, queue) = unsafe { ((*ctx.ctx).ingress_ifindex, (*ctx.ctx).rx_queue_index) };
    let owns_sockets = if v & EGRESS_CHECKED != 0 {
        v & EGRESS_XSK != 0
    } else {
        egress(ingress).is_some_and(|eg| eg.has_flag(EGRESS_FLAG_XSK))
    };
    if !owns_sockets {
        return PASS;
    }
    match LAN_XSKS.redirect(queue, u64::from(PASS)) {
        Ok(action) => {
            count_index(LanCounter::RedirectedXsk.index());
            action
        }
        Err(_) => PASS,
    }
}

/// Action and counter index in one register (non-inlined BPF functions cannot return a
/// struct), plus [`KERNEL_ONLY`].
#[inline(always)]
fn pack(v: (u32, LanCounter)) -> u32 {
    v.0 | (v.1.index() << 8)
}

/// Bit in the action of a returned packet that only the kernel can finish: its transport
/// checksum is partial (local sender, GRO), which the kernel completes on the way into the TUN
/// but nothing completes for an AF_XDP socket, so it is never redirected to one.
const KERNEL_ONLY: u32 = 1 << 24;

/// Bit in the action of a returned packet whose interface's egress entry was already looked
/// up; [`EGRESS_XSK`] then says whether it has `EGRESS_FLAG_XSK`.
const EGRESS_CHECKED: u32 = 1 << 25;
/// See [`EGRESS_CHECKED`].
const EGRESS_XSK: u32 = 1 << 26;

/// `v` with [`KERNEL_ONLY`] set when `partial`, and with what the egress entry `eg` of the
/// interface says about AF_XDP sockets ([`EGRESS_CHECKED`]).
#[inline(always)]
fn tag_returned(v: (u32, LanCounter), partial: bool, eg: &FwdEgress) -> (u32, LanCounter) {
    let mut action = v.0 | EGRESS_CHECKED;
    if eg.has_flag(EGRESS_FLAG_XSK) {
        action |= EGRESS_XSK;
    }
    if partial {
        action |= KERNEL_ONLY;
    }
    (action, v.1)
}

#[inline(never)]
fn flow_return(ctx: &XdpContext, cfg: &FwdConfig) -> u32 {
    pack(process(ctx, cfg))
}

/// Counts under a counter index (the map lookup bounds it).
#[inline(always)]
fn count_index(index: u32) {
    if let Some(slot) = LAN_RET_COUNTERS.get_ptr_mut(index) {
        // SAFETY: `slot` is the kernel's pointer to this CPU's copy of an existing element;
        // BPF programs run with migration disabled, so no other CPU writes it.
        unsafe { *slot += 1 };
    }
}

/// Whether two stamps lie in the same `2^30` ns (about 1.07 s) epoch.
#[inline(always)]
fn same_epoch(a: u64, b: u64) -> bool {
    a >> 30 == b >> 30
}

/// Checks a reply's connection entry (it must still own reply tuple `rk` and not have idled
/// out, counting the reply entry's stamp too), moves both entries' state on by the reply's TCP
/// `tcp_flags` and stamps them `now`. False when the connection is gone.
#[inline(always)]
fn refresh_connection(
    reply: &mut CtReplyVal,
    rk: &CtReplyKey,
    tcp_flags: u8,
    now: u64,
    cfg: &FwdConfig,
) -> bool {
    let Some(op) = FWD_CT_ORIG.get_ptr_mut(&reply.orig) else {
        return false;
    };
    // SAFETY: a non-null value pointer the kernel returned for this map, valid for this
    // invocation; plain bytes, written field by field.
    let conn = unsafe { &mut *op };
    if conn.reply != *rk || cfg.expired(conn.state, ct_last_seen(conn, reply), now) {
        return false;
    }
    let state = CtState::from_u8(conn.state).next(true, tcp_flags) as u8;
    conn.state = state;
    conn.last_seen = now.to_be_bytes();
    reply.state = state;
    reply.last_seen = now.to_be_bytes();
    true
}

#[inline(always)]
fn pass(c: LanCounter) -> (u32, LanCounter) {
    (PASS, c)
}

#[inline(always)]
fn process(ctx: &XdpContext, cfg: &FwdConfig) -> (u32, LanCounter) {
    let Some(eth) = read::<EthHdr>(ctx, 0) else {
        return pass(LanCounter::PassNoMatch);
    };
    if eth.ether_type != ETH_P_IPV4 {
        if eth.ether_type == ETH_P_8021Q || eth.ether_type == ETH_P_8021AD {
            return pass(LanCounter::PassUnsupported);
        }
        return pass(LanCounter::PassNoMatch);
    }
    let Some(ip) = read::<Ipv4Hdr>(ctx, L3) else {
        return pass(LanCounter::PassUnsupported);
    };
    // SAFETY: `ctx.ctx` points to this invocation's `xdp_md`.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let Some(eg) = egress(ingress) else {
        return pass(LanCounter::PassNoMatch);
    };
    if ip.dst != eg.snat_v4 {
        return pass(LanCounter::PassNoMatch);
    }
    let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
    let tot = u16::from_be_bytes(ip.tot_len) as usize;
    // Trailing bytes (Ethernet padding) are allowed; the kernel trims them. A total length
    // beyond the frame fails the transport-header checks or is dropped by the kernel.
    if ip.version_ihl >> 4 != 4 || ihl < 20 || tot < ihl {
        return pass(LanCounter::PassUnsupported);
    }
    if ip.frag_off[0] & 0x3f != 0 || ip.frag_off[1] != 0 {
        return pass(LanCounter::PassUnsupported);
    }
    let proto = ip.protocol;
    let l4_off = L3 + ihl;
    let l4_len = tot - ihl;
    let l4 = match parse_l4(ctx, l4_off, proto, l4_len, false) {
        Ok(l4) => l4,
        Err(PARSE_NO_MATCH) => return pass(LanCounter::PassNoMatch),
        Err(_) => return pass(LanCounter::PassUnsupported),
    };
    let Some(sc) = scratch() else {
        return pass(LanCounter::PassUnsupported);
    };
    // Field by field, padding untouched (always zero in the scratch map).
    let rk = &mut sc.rk;
    rk.ifindex = ingress.to_be_bytes();
    rk.proto = proto;
    rk.src = ip.src;
    rk.dst = ip.dst;
    rk.sport = l4.sport;
    rk.dport = l4.dport;
    let rk = &sc.rk;
    let Some(rv) = FWD_CT_REPLY.get_ptr_mut(rk) else {
        return pass(LanCounter::PassNoMatch);
    };
    // SAFETY (map values below): non-null value pointers the kernel returned for these maps,
    // valid for this invocation; the values are plain bytes. They are read and written in
    // place (map values can be helper arguments) to keep the 512-byte stack small.
    let reply = unsafe { &mut *rv };
    let now = now_ns();
    let state = CtState::from_u8(reply.state).next(true, l4.flags) as u8;
    // One lookup while the state stays and the reply entry alone shows the connection alive,
    // stamped in the same clock epoch; otherwise (and so at least once per epoch and flow) the
    // connection entry decides: it owns the state, it must still own this reply tuple, and
    // the lookup keeps it recently used for the LRU map's eviction.
    if state == reply.state
        && same_epoch(now, reply.last_seen())
        && !cfg.expired(reply.state, reply.last_seen(), now)
    {
        reply.last_seen = now.to_be_bytes();
    } else if !refresh_connection(reply, rk, l4.flags, now, cfg) {
        return pass(LanCounter::PassExpired);
    }
    let (orig, flags) = (&reply.orig, reply.flags);
    let df = ip.frag_off[0] & 0x40 != 0;
    let tun_mtu = cfg.tun_mtu() as usize;
    // Replies from local senders (veth/tap on this machine) may carry a partial checksum, and
    // so do GRO super-packets when this program runs in generic mode (after GRO). Those are
    // segmented by the kernel on the way into the TUN, so the size check does not apply.
    let partial = !l4.echo
        && l4.csum != 0
        && looks_partial(
            ctx,
            l4.csum,
            l4_off,
            l4_len,
            pseudo4(&ip.src, &ip.dst, proto, l4_len),
        );
    if flags & CT_FLAG_VIA6 == 0 {
        if tun_mtu != 0 && tot > tun_mtu && df && !partial {
            return icmp4_too_big(ctx, &eth, &ip, &eg, ihl, tun_mtu as u16);
        }
        let (client, cport) = (orig.src, orig.sport);
        let v = return_v4(
            ctx,
            &ip,
            &l4,
            l4_off,
            [client[0], client[1], client[2], client[3]],
            cport,
            partial,
        );
        tag_returned(v, partial, &eg)
    } else {
        if ihl != 20 {
            // IPv4 options have no IPv6 equivalent here.
            return pass(LanCounter::PassUnsupported);
        }
        // (A GSO super-packet here — generic mode with GRO on — cannot be segmented as IPv6
        // after translation; the loader warns about that setup.)
        if tun_mtu != 0 && tot + 20 > tun_mtu && !partial {
            if df {
                return icmp4_too_big(ctx, &eth, &ip, &eg, ihl, (tun_mtu - 20) as u16);
            }
            return (DROP, LanCounter::DropTooBig);
        }
        tag_returned(
            return_via6(ctx, &eth, &ip, &l4, orig, partial),
            partial,
            &eg,
        )
    }
}

/// De-SNAT in place: destination address and port / echo ID back to the client's.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn return_v4(
    ctx: &XdpContext,
    ip: &Ipv4Hdr,
    l4: &L4,
    l4_off: usize,
    dst: [u8; 4],
    dport: [u8; 2],
    partial: bool,
) -> (u32, LanCounter) {
    let ip_csum = csum_update(u16::from_be_bytes(ip.check), sum4(&ip.dst), sum4(&dst));
    let old = l4.csum;
    let csum = if l4.echo {
        csum_update(old, w16(l4.dport), w16(dport))
    } else if partial {
        // Only the pseudo-header is in a partial checksum; the port is summed later.
        csum_update_partial(old, sum4(&ip.dst), sum4(&dst))
    } else if ip.protocol == 17 && old == 0 {
        0
    } else {
        let c = csum_update(old, sum4(&ip.dst) + w16(l4.dport), sum4(&dst) + w16(dport));
        if ip.protocol == 17 {
            udp_wire(c)
        } else {
            c
        }
    };
    let mut hdr = *ip;
    hdr.dst = dst;
    hdr.check = ip_csum.to_be_bytes();
    let port_off = if l4.echo { l4_off + 4 } else { l4_off + 2 };
    if !write(ctx, L3, hdr)
        || !write(ctx, port_off, dport)
        || !write(ctx, l4_off + l4.csum_off, csum.to_be_bytes())
    {
        return (DROP, LanCounter::DropError);
    }
    (PASS, LanCounter::ReturnedV4)
}

/// Longest UDP segment whose checksum `return_via6` computes in full (IPv4 allows a zero UDP
/// checksum, IPv6 does not).
const UDP_FULL_SUM_WORDS: usize = 372;

/// IPv4 → IPv6 for connection `orig` (a map value): from the LAN host's 4via6 address (the
/// connection's original destination) to the client, port / echo ID back to the client's.
/// The header grows by 20 bytes; the transport header stays in place.
#[inline(always)]
fn return_via6(
    ctx: &XdpContext,
    eth: &EthHdr,
    ip: &Ipv4Hdr,
    l4: &L4,
    orig: &CtOrigKey,
    partial: bool,
) -> (u32, LanCounter) {
    let src6 = &orig.dst;
    let dst6 = &orig.src;
    let dport = orig.sport;
    let proto = ip.protocol;
    let nh = if proto == PROTO_ICMP {
        PROTO_ICMPV6
    } else {
        proto
    };
    let tot = u16::from_be_bytes(ip.tot_len) as usize;
    let l4_len = tot - 20;
    let l4_off = L3 + 20;
    let new_pseudo = pseudo6(src6, dst6, nh, l4_len);
    let old = l4.csum;
    let csum = if l4.echo {
        let c = csum_update(
            old,
            w16([0, l4.code]) + w16(l4.dport),
            new_pseudo + w16([129, l4.code]) + w16(dport),
        );
        if !write(ctx, l4_off, [129u8, l4.code]) {
            return (DROP, LanCounter::DropError);
        }
        c
    } else if partial {
        csum_update_partial(old, pseudo4(&ip.src, &ip.dst, proto, l4_len), new_pseudo)
    } else if proto == 17 && old == 0 {
        // No UDP checksum: IPv6 needs one, computed in full over the segment (new ports).
        let Some(ulen) = read::<[u8; 2]>(ctx, l4_off + 4) else {
            return pass(LanCounter::PassUnsupported);
        };
        let ulen = u16::from_be_bytes(ulen) as usize;
        let Some(body) = sum_packet::<UDP_FULL_SUM_WORDS>(ctx, l4_off, ulen) else {
            return pass(LanCounter::PassUnsupported);
        };
        // The segment was summed with the old destination port.
        let s = body - w16(l4.dport) + w16(dport) + new_pseudo;
        udp_wire(!fold(s))
    } else {
        let c = csum_update(
            old,
            pseudo4(&ip.src, &ip.dst, proto, l4_len) + w16(l4.dport),
            new_pseudo + w16(dport),
        );
        if proto == 17 {
            udp_wire(c)
        } else {
            c
        }
    };
    let port_off = if l4.echo { l4_off + 4 } else { l4_off + 2 };
    if !write(ctx, port_off, dport) || !write(ctx, l4_off + l4.csum_off, csum.to_be_bytes()) {
        return (DROP, LanCounter::DropError);
    }
    let pl = (l4_len as u16).to_be_bytes();
    let first = [
        0x60 | (ip.tos >> 4),
        ip.tos << 4,
        0,
        0,
        pl[0],
        pl[1],
        nh,
        ip.ttl,
    ];
    if !adjust_head(ctx, -20) {
        return (DROP, LanCounter::DropError);
    }
    // Volatile reads of the map value: a plain map-to-packet copy compiles to a `memmove` call.
    // SAFETY: `src6`/`dst6` are references into a live map value (see `process`).
    let (s6, d6) = unsafe {
        (
            core::ptr::read_volatile(src6),
            core::ptr::read_volatile(dst6),
        )
    };
    if !write(ctx, 0, eth_bytes(eth.dst, eth.src, ETH_P_IPV6))
        || !write(ctx, L3, first)
        || !write(ctx, L3 + 8, s6)
        || !write(ctx, L3 + 24, d6)
    {
        return (DROP, LanCounter::DropError);
    }
    (PASS, LanCounter::ReturnedVia6)
}

/// Longest quote in an ICMPv4 error: 576 - 20 - 8.
const ICMP4_QUOTE_MAX: usize = 548;

/// Answers the LAN host with ICMP "fragmentation needed" (`mtu`) about its packet, from the
/// router's address it was sent to, out of the interface it came in on (`XDP_TX`).
#[inline(always)]
fn icmp4_too_big(
    ctx: &XdpContext,
    eth: &EthHdr,
    ip: &Ipv4Hdr,
    eg: &FwdEgress,
    ihl: usize,
    mtu: u16,
) -> (u32, LanCounter) {
    // As much of the packet as fits in 576 bytes (RFC 1812 §4.3.2.3, as `nat::translate::
    // icmp_error` and the kernel).
    let tot = u16::from_be_bytes(ip.tot_len) as usize;
    let quote_len = if tot > ICMP4_QUOTE_MAX {
        ICMP4_QUOTE_MAX
    } else {
        tot
    };
    if quote_len < ihl + 8 {
        return pass(LanCounter::PassUnsupported);
    }
    let Some(quote) = sum_packet::<{ ICMP4_QUOTE_MAX / 4 }>(ctx, L3, quote_len) else {
        return pass(LanCounter::PassUnsupported);
    };
    let m = mtu.to_be_bytes();
    let c = (!fold(w16([3, 4]) + w16(m) + quote)).to_be_bytes();
    let tl = ((20 + 8 + quote_len) as u16).to_be_bytes();
    let src = eg.snat_v4;
    let dst = ip.src;
    let mut h: [u8; 20] = [
        0x45, 0, tl[0], tl[1], 0, 0, 0, 0, 64, PROTO_ICMP, 0, 0, src[0], src[1], src[2], src[3],
        dst[0], dst[1], dst[2], dst[3],
    ];
    let mut s: u64 = 0;
    let mut i = 0;
    while i < 20 {
        s += w16([h[i], h[i + 1]]);
        i += 2;
    }
    let hc = (!fold(s)).to_be_bytes();
    h[10] = hc[0];
    h[11] = hc[1];
    if !adjust_head(ctx, -28) {
        return (DROP, LanCounter::DropError);
    }
    if !write(ctx, 0, eth_bytes(eth.src, eth.dst, ETH_P_IPV4))
        || !write(ctx, L3, h)
        || !write(ctx, L3 + 20, [3u8, 4, c[0], c[1], 0, 0, m[0], m[1]])
    {
        return (DROP, LanCounter::DropError);
    }
    let delta = (L3 + 28 + quote_len) as i32 - packet_len(ctx) as i32;
    // SAFETY: `ctx.ctx` is this program's context; shrinking the tail stays inside the buffer.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return (DROP, LanCounter::DropError);
    }
    (xdp_action::XDP_TX, LanCounter::IcmpTooBig)
}

// ---------------------------------------------------------------------------------------------
// ICMP errors from the LAN about packets of tracked connections (as `nat::engine::inbound`).

/// Offsets in an Ethernet frame carrying an IPv4 ICMP error without IP options.
const ICMP: usize = L3 + 20;
const INNER: usize = ICMP + 8;
const INNER_L4: usize = INNER + 20;
/// Longest ICMP message handled (its checksum is computed in full).
const ICMP_MAX_WORDS: usize = 375;

/// Whether the frame is an IPv4 ICMP error (destination unreachable, time exceeded,
/// parameter problem) without IP options.
#[inline(always)]
fn is_icmp_error(ctx: &XdpContext) -> bool {
    let Some(h) = read::<[u8; 36]>(ctx, 0) else {
        return false;
    };
    h[12] == 0x08
        && h[13] == 0
        && h[14] == 0x45
        && h[23] == PROTO_ICMP
        && matches!(h[34], 3 | 11 | 12)
}

/// `icmp_error_lookup` results meaning "go on" (never a packed verdict: action < 256).
const ICMP_GO_V4: u32 = u32::MAX;
const ICMP_GO_VIA6: u32 = u32::MAX - 1;

/// Finds the connection an ICMP error is about and leaves the client's side of it in the
/// scratch map (`rk` = the reply tuple, `key` = the original tuple); nothing modified.
#[inline(never)]
fn icmp_error_lookup(ctx: &XdpContext, cfg: &FwdConfig) -> u32 {
    match icmp_error_find(ctx, cfg) {
        Ok(true) => ICMP_GO_VIA6,
        Ok(false) => ICMP_GO_V4,
        Err(v) => pack(v),
    }
}

/// ICMPv4 error → ICMPv6 (type, code, rest of header), RFC 7915 §4.2 (as
/// `nat::translate::icmp_error_4to6`).
#[inline(always)]
fn icmp_4to6(typ: u8, code: u8, rest: [u8; 4]) -> Option<(u8, u8, [u8; 4])> {
    match typ {
        3 => match code {
            0 | 1 | 5 | 6 | 7 | 8 | 11 | 12 => Some((1, 0, [0; 4])),
            2 => Some((4, 1, [0, 0, 0, 6])),
            3 => Some((1, 4, [0; 4])),
            4 => {
                let mtu4 = u16::from_be_bytes([rest[2], rest[3]]) as u32;
                let mtu6 = if mtu4 == 0 { 1280 } else { mtu4 + 20 };
                Some((2, 0, mtu6.to_be_bytes()))
            }
            9 | 10 | 13 | 15 => Some((1, 1, [0; 4])),
            _ => None,
        },
        11 => Some((3, code, [0; 4])),
        _ => None,
    }
}

/// `Ok(via6)`: the error is about a tracked connection.
#[inline(always)]
fn icmp_error_find(ctx: &XdpContext, cfg: &FwdConfig) -> Result<bool, (u32, LanCounter)> {
    let Some(ip) = read::<Ipv4Hdr>(ctx, L3) else {
        return Err(pass(LanCounter::PassUnsupported));
    };
    // SAFETY: `ctx.ctx` points to this invocation's `xdp_md`.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let Some(eg) = egress(ingress) else {
        return Err(pass(LanCounter::PassNoMatch));
    };
    if ip.dst != eg.snat_v4 {
        return Err(pass(LanCounter::PassNoMatch));
    }
    let tot = u16::from_be_bytes(ip.tot_len) as usize;
    if ip.frag_off[0] & 0x3f != 0 || ip.frag_off[1] != 0 || tot < 20 + 8 + 28 {
        return Err(pass(LanCounter::PassUnsupported));
    }
    let icmp_len = tot - 20;
    if icmp_len > ICMP_MAX_WORDS * 4 {
        return Err(pass(LanCounter::PassUnsupported));
    }
    let (Some(inner), Some(il4)) = (read::<Ipv4Hdr>(ctx, INNER), read::<[u8; 8]>(ctx, INNER_L4))
    else {
        return Err(pass(LanCounter::PassUnsupported));
    };
    // The quoted packet must be one we sent: from the SNAT address, first fragment.
    let iproto = inner.protocol;
    let inner_len = u16::from_be_bytes(inner.tot_len) as usize;
    if inner.version_ihl != 0x45
        || inner.src != eg.snat_v4
        || inner.frag_off[0] & 0x1f != 0
        || inner.frag_off[1] != 0
        || inner_len < 20
    {
        return Err(pass(LanCounter::PassUnsupported));
    }
    // The quoted packet's ports (echo request: ID as source port).
    let (isport, idport) = match iproto {
        6 | 17 => ([il4[0], il4[1]], [il4[2], il4[3]]),
        PROTO_ICMP if il4[0] == 8 => ([il4[4], il4[5]], [0, 0]),
        _ => return Err(pass(LanCounter::PassUnsupported)),
    };
    let Some(sc) = scratch() else {
        return Err(pass(LanCounter::PassUnsupported));
    };
    // Its connection: the reply tuple is the quoted packet reversed.
    let rk = &mut sc.rk;
    rk.ifindex = ingress.to_be_bytes();
    rk.proto = iproto;
    rk.src = inner.dst;
    rk.dst = inner.src;
    rk.sport = idport;
    rk.dport = isport;
    let rk = &sc.rk;
    let Some(rv) = FWD_CT_REPLY.get_ptr(rk) else {
        return Err(pass(LanCounter::PassNoMatch));
    };
    // SAFETY: map values read in place (see `process`); not refreshed by errors.
    let reply = unsafe { &*rv };
    let orig = &reply.orig;
    let Some(op) = FWD_CT_ORIG.get_ptr(orig) else {
        return Err(pass(LanCounter::PassExpired));
    };
    // SAFETY: as above.
    let conn = unsafe { &*op };
    let flags = conn.flags;
    if conn.reply != *rk || cfg.expired(conn.state, ct_last_seen(conn, reply), now_ns()) {
        return Err(pass(LanCounter::PassExpired));
    }
    // SAFETY: as above; the original tuple is copied for the rewriting subprogram.
    sc.key = unsafe { core::ptr::read_volatile(orig) };
    Ok(flags & CT_FLAG_VIA6 != 0)
}

/// The packet facts both rewriting subprograms re-read (the packet is unchanged so far).
struct IcmpErr {
    eth: EthHdr,
    ip: Ipv4Hdr,
    icmp: [u8; 8],
    inner: Ipv4Hdr,
    il4: [u8; 8],
}

#[inline(always)]
fn icmp_err_facts(ctx: &XdpContext) -> Option<IcmpErr> {
    Some(IcmpErr {
        eth: read(ctx, 0)?,
        ip: read(ctx, L3)?,
        icmp: read(ctx, ICMP)?,
        inner: read(ctx, INNER)?,
        il4: read(ctx, INNER_L4)?,
    })
}

#[inline(never)]
fn icmp_error_v4(ctx: &XdpContext) -> u32 {
    pack(icmp_error_v4_inner(ctx))
}

/// Same family: outer destination and the quoted source (address, port / echo ID) back to the
/// client; IP, quoted and ICMP checksums updated.
#[inline(always)]
fn icmp_error_v4_inner(ctx: &XdpContext) -> (u32, LanCounter) {
    let (Some(f), Some(sc)) = (icmp_err_facts(ctx), scratch()) else {
        return (DROP, LanCounter::DropError);
    };
    let (ip, inner, il4) = (&f.ip, &f.inner, &f.il4);
    let c = &sc.key.src;
    let client = [c[0], c[1], c[2], c[3]];
    let cport = sc.key.sport;
    let quoted_l4 = u16::from_be_bytes(ip.tot_len) as usize - 48;
    let snat = inner.src;
    let mut outer = *ip;
    outer.dst = client;
    outer.check =
        csum_update(u16::from_be_bytes(ip.check), sum4(&snat), sum4(&client)).to_be_bytes();
    let mut q = *inner;
    q.src = client;
    q.check =
        csum_update(u16::from_be_bytes(inner.check), sum4(&snat), sum4(&client)).to_be_bytes();
    if !write(ctx, L3, outer) || !write(ctx, INNER, q) {
        return (DROP, LanCounter::DropError);
    }
    let old_port = if inner.protocol == PROTO_ICMP {
        [il4[4], il4[5]]
    } else {
        [il4[0], il4[1]]
    };
    let ok = match inner.protocol {
        17 => {
            let c = u16::from_be_bytes([il4[6], il4[7]]);
            let c = if c == 0 {
                0
            } else {
                udp_wire(csum_update(
                    c,
                    sum4(&snat) + w16(old_port),
                    sum4(&client) + w16(cport),
                ))
            };
            write(ctx, INNER_L4, cport) && write(ctx, INNER_L4 + 6, c.to_be_bytes())
        }
        6 => {
            let mut ok = write(ctx, INNER_L4, cport);
            if quoted_l4 >= 18 {
                if let Some(c) = read::<[u8; 2]>(ctx, INNER_L4 + 16) {
                    let c = csum_update(
                        u16::from_be_bytes(c),
                        sum4(&snat) + w16(old_port),
                        sum4(&client) + w16(cport),
                    );
                    ok = ok && write(ctx, INNER_L4 + 16, c.to_be_bytes());
                }
            }
            ok
        }
        _ => {
            let c = csum_update(
                u16::from_be_bytes([il4[2], il4[3]]),
                w16(old_port),
                w16(cport),
            );
            write(ctx, INNER_L4 + 4, cport) && write(ctx, INNER_L4 + 2, c.to_be_bytes())
        }
    };
    // The ICMP checksum, computed in full (as the reference does).
    if !ok || !write(ctx, ICMP + 2, [0u8, 0]) {
        return (DROP, LanCounter::DropError);
    }
    let icmp_len = u16::from_be_bytes(ip.tot_len) as usize - 20;
    let Some(sum) = sum_packet::<ICMP_MAX_WORDS>(ctx, ICMP, icmp_len) else {
        return (DROP, LanCounter::DropError);
    };
    if !write(ctx, ICMP + 2, (!fold(sum)).to_be_bytes()) {
        return (DROP, LanCounter::DropError);
    }
    (PASS, LanCounter::ReturnedIcmpError)
}

/// An ICMPv6 error must fit the IPv6 minimum MTU.
const ICMPV6_ERROR_MAX: usize = 1280;

#[inline(never)]
fn icmp_error_via6(ctx: &XdpContext) -> u32 {
    match icmp6_quote_sub(ctx) {
        ICMP_GO_V4 => icmp6_headers(ctx),
        v => v,
    }
}

/// 4via6, step 1: translates the quoted transport header in place (ports / echo ID back to
/// the client's, echo request type, checksum with the IPv6 pseudo-header). A subprogram of its
/// own (the whole translation does not fit one 512-byte stack frame).
#[inline(never)]
fn icmp6_quote_sub(ctx: &XdpContext) -> u32 {
    match icmp6_quote_inner(ctx) {
        Ok(()) => ICMP_GO_V4,
        Err(v) => pack(v),
    }
}

#[inline(always)]
fn icmp6_quote_inner(ctx: &XdpContext) -> Result<(), (u32, LanCounter)> {
    let (Some(f), Some(sc)) = (icmp_err_facts(ctx), scratch()) else {
        return Err((DROP, LanCounter::DropError));
    };
    let (ip, icmp, inner, il4) = (&f.ip, &f.icmp, &f.inner, &f.il4);
    if icmp_4to6(icmp[0], icmp[1], [icmp[4], icmp[5], icmp[6], icmp[7]]).is_none() {
        return Err(pass(LanCounter::PassUnsupported));
    }
    let cport = sc.key.sport;
    let quoted_l4 = u16::from_be_bytes(ip.tot_len) as usize - 48;
    let iproto = inner.protocol;
    let inh = if iproto == PROTO_ICMP {
        PROTO_ICMPV6
    } else {
        iproto
    };
    let decl = u16::from_be_bytes(inner.tot_len) as usize - 20;
    let old_pseudo = if iproto == PROTO_ICMP {
        0
    } else {
        pseudo4(&inner.src, &inner.dst, iproto, decl)
    };
    let new_pseudo = pseudo6(&sc.key.src, &sc.key.dst, inh, decl);
    let ok = match iproto {
        17 => {
            let old = [il4[0], il4[1]];
            let c = u16::from_be_bytes([il4[6], il4[7]]);
            let c = if c == 0 {
                0
            } else {
                udp_wire(csum_update(
                    c,
                    old_pseudo + w16(old),
                    new_pseudo + w16(cport),
                ))
            };
            write(ctx, INNER_L4, cport) && write(ctx, INNER_L4 + 6, c.to_be_bytes())
        }
        6 => {
            let old = [il4[0], il4[1]];
            let mut ok = write(ctx, INNER_L4, cport);
            if quoted_l4 >= 18 {
                if let Some(c) = read::<[u8; 2]>(ctx, INNER_L4 + 16) {
                    let c = csum_update(
                        u16::from_be_bytes(c),
                        old_pseudo + w16(old),
                        new_pseudo + w16(cport),
                    );
                    ok = ok && write(ctx, INNER_L4 + 16, c.to_be_bytes());
                }
            }
            ok
        }
        _ => {
            let old = [il4[4], il4[5]];
            let c = csum_update(
                u16::from_be_bytes([il4[2], il4[3]]),
                w16([8, il4[1]]) + w16(old),
                new_pseudo + w16([128, il4[1]]) + w16(cport),
            );
            write(ctx, INNER_L4, [128u8, il4[1]])
                && write(ctx, INNER_L4 + 2, c.to_be_bytes())
                && write(ctx, INNER_L4 + 4, cport)
        }
    };
    if ok {
        Ok(())
    } else {
        Err((DROP, LanCounter::DropError))
    }
}

/// 4via6, step 2: the outer IPv6 header from the reporter's 4via6 address (same site as the
/// connection) to the client, the ICMPv6 header, the quoted IPv6 header, and the ICMPv6
/// checksum (in full). Headers grow by 40 bytes; the quoted transport bytes stay in place.
#[inline(never)]
fn icmp6_headers(ctx: &XdpContext) -> u32 {
    pack(icmp6_headers_inner(ctx))
}

#[inline(always)]
fn icmp6_headers_inner(ctx: &XdpContext) -> (u32, LanCounter) {
    let (Some(f), Some(sc)) = (icmp_err_facts(ctx), scratch()) else {
        return (DROP, LanCounter::DropError);
    };
    let (eth, ip, icmp, inner) = (&f.eth, &f.ip, &f.icmp, &f.inner);
    let Some((t6, c6, rest6)) = icmp_4to6(icmp[0], icmp[1], [icmp[4], icmp[5], icmp[6], icmp[7]])
    else {
        return (DROP, LanCounter::DropError);
    };
    let iproto = inner.protocol;
    let inh = if iproto == PROTO_ICMP {
        PROTO_ICMPV6
    } else {
        iproto
    };
    let decl = u16::from_be_bytes(inner.tot_len) as usize - 20;
    let quoted_l4 = u16::from_be_bytes(ip.tot_len) as usize - 48;
    // SAFETY: reading scratch map memory this program wrote in `icmp_error_lookup`.
    let (client6, host6) = unsafe {
        (
            core::ptr::read_volatile(&sc.key.src),
            core::ptr::read_volatile(&sc.key.dst),
        )
    };
    let src6 = {
        let mut a = host6;
        a[12] = ip.src[0];
        a[13] = ip.src[1];
        a[14] = ip.src[2];
        a[15] = ip.src[3];
        a
    };
    let mut icmp6_len = 8 + 40 + quoted_l4;
    if !adjust_head(ctx, -40) {
        return (DROP, LanCounter::DropError);
    }
    if 40 + icmp6_len > ICMPV6_ERROR_MAX {
        // Truncate to 1280 bytes (frame: 14 + 1280).
        let delta = (L3 + ICMPV6_ERROR_MAX) as i32 - packet_len(ctx) as i32;
        // SAFETY: `ctx.ctx` is this program's context; shrinking the tail stays in the buffer.
        if delta < 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
            return (DROP, LanCounter::DropError);
        }
        icmp6_len = ICMPV6_ERROR_MAX - 40;
    }
    let pl = (icmp6_len as u16).to_be_bytes();
    let dl = (decl as u16).to_be_bytes();
    let first = [
        0x60 | (ip.tos >> 4),
        ip.tos << 4,
        0,
        0,
        pl[0],
        pl[1],
        PROTO_ICMPV6,
        ip.ttl,
    ];
    let ifirst = [
        0x60 | (inner.tos >> 4),
        inner.tos << 4,
        0,
        0,
        dl[0],
        dl[1],
        inh,
        inner.ttl,
    ];
    const O6: usize = L3;
    const ICMP6: usize = O6 + 40;
    const I6: usize = ICMP6 + 8;
    if !write(ctx, 0, eth_bytes(eth.dst, eth.src, ETH_P_IPV6))
        || !write(ctx, O6, first)
        || !write(ctx, O6 + 8, src6)
        || !write(ctx, O6 + 24, client6)
        || !write(
            ctx,
            ICMP6,
            [t6, c6, 0, 0, rest6[0], rest6[1], rest6[2], rest6[3]],
        )
        || !write(ctx, I6, ifirst)
        || !write(ctx, I6 + 8, client6)
        || !write(ctx, I6 + 24, host6)
    {
        return (DROP, LanCounter::DropError);
    }
    let Some(sum) = sum_packet::<ICMP_MAX_WORDS>(ctx, ICMP6, icmp6_len) else {
        return (DROP, LanCounter::DropError);
    };
    let c = !fold(sum + pseudo6(&src6, &client6, PROTO_ICMPV6, icmp6_len));
    if !write(ctx, ICMP6 + 2, c.to_be_bytes()) {
        return (DROP, LanCounter::DropError);
    }
    (PASS, LanCounter::ReturnedIcmpError)
}
