//! `tun_forward`: XDP program (generic mode) on the daemon's TUN device. It sees the decrypted
//! packets the daemon writes into the TUN, as raw IP packets (no link-layer header).
//!
//! * IPv4 from the tailnet (100.64.0.0/10) to an advertised prefix, and IPv6 to an advertised
//!   4via6 prefix (translated to IPv4, RFC 7915 as `nat::translate`), are SNATed to the egress
//!   interface's address (plain IPv4 only when SNAT is on) with a connection entry, get their
//!   TTL decremented, a next hop from `bpf_fib_lookup`, an Ethernet header, and are redirected
//!   to the LAN interface.
//! * The FIB is consulted *before* anything is modified. When the kernel has to take over
//!   (no neighbour entry yet, too big without DF, a GSO super-packet), the packet is NATed
//!   first when its flow needs it — so a flow never has two NAT mappings, one from XDP and
//!   another from the kernel's masquerade — and passed with a link-layer header the generic
//!   XDP path of an L3 device needs (see `fwd::fake_l2`); the kernel then routes it, resolving
//!   the neighbour or fragmenting. Packets the kernel must answer itself (DF too big, TTL
//!   expiring) are passed untouched; 4via6 packets too big for the LAN get an ICMPv6 "packet
//!   too big" back into the tunnel (`XDP_TX` on the TUN delivers to the daemon).
//! * Everything else is passed untouched.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, xdp_action, BPF_ANY, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::{bpf_get_prandom_u32, bpf_redirect, bpf_xdp_adjust_tail},
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use gateway_common::forward::{
    is_forbidden_via_target, is_tailnet_v4, CtState, FwdConfig, TunCounter, CT_FAMILY_V4,
    CT_FAMILY_V6, CT_FLAG_VIA6, FWD_FLAG_ENABLED, FWD_FLAG_SNAT, PROTO_ICMP, PROTO_ICMPV6,
    PROTO_TCP, TCP_ACK, TCP_SYN, VIA_PREFIX,
};

use crate::fwd::{
    adjust_head, adv_v4, adv_via, allocate, csum_update, csum_update_partial, egress, eth_bytes,
    fake_l2, fib_lookup_v4, fold, looks_partial, now_ns, packet_len, parse_l4, pseudo4, pseudo6,
    read, scratch, sum4, sum_packet, udp_wire, w16, write, write_fake_l2_before, Ipv4Hdr, Ipv6Hdr,
    Scratch, CT_CHECK_INTERVAL_NS, DF_THRESHOLD, ETH_P_IPV4, ETH_P_IPV6, FWD_CONFIG, FWD_CT_ORIG,
    FWD_CT_REPLY, PARSE_NO_MATCH,
};

#[map]
static TUN_FWD_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TunCounter::COUNT, 0);

const PASS: u32 = xdp_action::XDP_PASS;
const DROP: u32 = xdp_action::XDP_DROP;

#[xdp]
pub fn tun_forward(ctx: XdpContext) -> u32 {
    let Some(cfg) = FWD_CONFIG.get(0) else {
        return PASS;
    };
    if !cfg.has_flag(FWD_FLAG_ENABLED) {
        return PASS;
    }
    let (action, counter) = forward(&ctx, cfg);
    count_index(counter);
    action
}

#[inline(always)]
fn count(counter: TunCounter) {
    count_index(counter.index());
}

/// Counts under a counter index (the map lookup bounds it).
#[inline(always)]
fn count_index(index: u32) {
    if let Some(slot) = TUN_FWD_COUNTERS.get_ptr_mut(index) {
        // SAFETY: `slot` is the kernel's pointer to this CPU's copy of an existing element;
        // BPF programs run with migration disabled, so no other CPU writes it.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn pass(c: TunCounter) -> (u32, TunCounter) {
    (PASS, c)
}

/// A verdict packed into one register: non-inlined BPF functions cannot return a struct (the
/// compiler returns it through a pointer to the caller's stack, which the verifier refuses).
#[inline(always)]
fn pack(v: (u32, TunCounter)) -> u32 {
    v.0 | (v.1.index() << 8)
}

/// Action and counter *index* (not converted back to the enum: a table lookup by a computed
/// index is hard on the verifier).
#[inline(always)]
fn unpack(v: u32) -> (u32, u32) {
    (v & 0xff, v >> 8)
}

#[inline(always)]
fn forward(ctx: &XdpContext, cfg: &FwdConfig) -> (u32, u32) {
    // (Not a 1-byte read at offset 0: the verifier learns no packet range from the
    // `data >= data_end` comparison the compiler turns that bounds check into.)
    let Some(first) = read::<[u8; 20]>(ctx, 0) else {
        return (PASS, TunCounter::PassNoMatch.index());
    };
    // Each family in steps that are BPF subprograms of their own, passing a `FwdPlan` along in
    // the scratch map: the stack frames stay small, and the connection step (with its port
    // allocation loop) is entered from only two places, so the verifier walks it only a few
    // times. Nothing is modified before the rewrite step.
    match first[0] >> 4 {
        4 => {
            let v = v4_plan(ctx, cfg);
            if v != GO {
                return unpack(v);
            }
            let v = ct_step(cfg, 0);
            if v != GO {
                return unpack(v);
            }
            unpack(v4_rewrite(ctx))
        }
        6 => {
            let v = via6_parse(ctx);
            if v != GO {
                return unpack(v);
            }
            match via6_route(ctx) {
                GO => {}
                TOO_BIG => return unpack(icmp6_too_big(ctx)),
                v => return unpack(v),
            }
            let v = ct_step(cfg, 1);
            if v != GO {
                return unpack(v);
            }
            unpack(via6_rewrite(ctx))
        }
        _ => (PASS, TunCounter::PassNoMatch.index()),
    }
}

/// Step results meaning "go on" / "too big for the LAN" (a packed verdict never has them:
/// action < 256, counter index < 2^16).
const GO: u32 = u32::MAX;
const TOO_BIG: u32 = u32::MAX - 1;

/// The connection step: for a packet that needs NAT (`plan.nat`), finds or creates its
/// connection (`sc.key` / `sc.rk` prepared by the planning step) and puts the SNAT port into
/// the plan.
#[inline(never)]
fn ct_step(cfg: &FwdConfig, via6: u32) -> u32 {
    let Some(sc) = scratch() else {
        return pack(pass(TunCounter::PassUnsupported));
    };
    if !sc.plan.nat {
        return GO;
    }
    match ct_outbound(cfg, sc, via6 != 0, sc.plan.l4.flags) {
        Ok((port, new)) => {
            if new {
                count(TunCounter::SnatNewConn);
            }
            sc.plan.new_sport = port.to_be_bytes();
            GO
        }
        Err(c) => pack(pass(c)),
    }
}

#[inline(always)]
fn ingress_ifindex(ctx: &XdpContext) -> u32 {
    // SAFETY: `ctx.ctx` points to this invocation's `xdp_md`.
    unsafe { (*ctx.ctx).ingress_ifindex }
}

/// What to do after the FIB lookup.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Rewrite, decrement TTL, add L2, redirect.
    Redirect,
    /// NAT if the flow needs it, then pass for the kernel to route.
    NatAndPass,
}

/// Why `route` does not go on with a packet.
enum Stop {
    /// Pass it untouched, counted here.
    Pass(TunCounter),
    /// Too big for the egress MTU (given) with DF set (always for translated 4via6 packets
    /// over 1260 bytes).
    TooBig(u32),
}

/// The packet facts `route` needs.
struct RouteQuery {
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    ports: ([u8; 2], [u8; 2]),
    tot_len: usize,
    table: u32,
    partial: bool,
    df: bool,
    /// Whether the packet needs NAT (then a pass needs the egress interface too).
    nat: bool,
}

/// Looks the route up (MTU checked) into `fib` and decides, before anything is modified. On
/// success returns the plan and its counter; `fib.ifindex` is the egress interface.
#[inline(always)]
fn route(
    ctx: &XdpContext,
    fib: &mut bpf_fib_lookup,
    q: &RouteQuery,
) -> Result<(Plan, TunCounter), Stop> {
    let ingress = ingress_ifindex(ctx);
    let rc = fib_lookup_v4(
        ctx,
        fib,
        ingress,
        q.src,
        q.dst,
        q.proto,
        q.ports,
        q.tot_len as u16,
        q.table,
    ) as u32;
    if rc == BPF_FIB_LKUP_RET_SUCCESS {
        if q.partial {
            // A GSO super-packet that fits: the kernel must segment / finish the checksum on
            // output (a generic-XDP redirect transmits the skb as it is).
            return Ok((Plan::NatAndPass, TunCounter::PassGso));
        }
        return Ok((Plan::Redirect, TunCounter::FwdV4));
    }
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH {
        let c = if q.partial {
            TunCounter::PassGso
        } else {
            TunCounter::PassNoNeigh
        };
        return Ok((Plan::NatAndPass, c));
    }
    if rc != BPF_FIB_LKUP_RET_FRAG_NEEDED {
        return Err(Stop::Pass(TunCounter::PassFib));
    }
    let c = if q.partial {
        TunCounter::PassGso
    } else if q.df {
        // SAFETY: reading the union member the kernel sets with FRAG_NEEDED.
        let mtu = unsafe { fib.__bindgen_anon_1.mtu_result } as u32;
        return Err(Stop::TooBig(mtu));
    } else {
        TunCounter::PassFragment
    };
    if !q.nat {
        return Err(Stop::Pass(c));
    }
    // FRAG_NEEDED is returned before the egress interface is known: look again without the
    // MTU check.
    let rc = fib_lookup_v4(
        ctx, fib, ingress, q.src, q.dst, q.proto, q.ports, 0, q.table,
    ) as u32;
    if rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH {
        return Err(Stop::Pass(TunCounter::PassFib));
    }
    Ok((Plan::NatAndPass, c))
}

/// Finds or creates the connection `sc.key` whose replies will match `sc.rk` (its `dport` is
/// filled in here). Returns the SNAT port / echo ID and whether the connection is new.
#[inline(always)]
fn ct_outbound(
    cfg: &FwdConfig,
    sc: &mut Scratch,
    via6: bool,
    tcp_flags: u8,
) -> Result<(u16, bool), TunCounter> {
    let now = now_ns();
    let mut prefer = 0u32;
    if let Some(p) = FWD_CT_ORIG.get_ptr_mut(&sc.key) {
        // SAFETY: a value pointer the kernel returned for this map, valid for this
        // invocation; plain bytes, read and written in place.
        let v = unsafe { &mut *p };
        let (r, rk) = (&v.reply, &sc.rk);
        let fits = r.ifindex == rk.ifindex
            && r.proto == rk.proto
            && r.src == rk.src
            && r.dst == rk.dst
            && r.sport == rk.sport;
        if fits {
            let state = CtState::from_u8(v.state).next(false, tcp_flags) as u8;
            let mut alive = !cfg.expired(v.state, v.last_seen(), now);
            // The reply entry: replies refresh only its stamp, and it keeps a copy of the
            // state. Looked at when this entry alone looks idle or the state changes, and at
            // least every CT_CHECK_INTERVAL_NS (LRU eviction may have removed it).
            let check = now.saturating_sub(u64::from_be_bytes(v.checked)) >= CT_CHECK_INTERVAL_NS;
            if !alive || state != v.state || check {
                match FWD_CT_REPLY.get_ptr_mut(&v.reply) {
                    Some(r) => {
                        // SAFETY: as above, for the reply map.
                        let r = unsafe { &mut *r };
                        if r.orig == sc.key {
                            alive = alive || !cfg.expired(v.state, r.last_seen(), now);
                            if alive {
                                r.state = state;
                            }
                        }
                    }
                    None if alive => {
                        // Evicted: restore it.
                        sc.rval.orig = sc.key;
                        sc.rval.flags = v.flags;
                        sc.rval.state = state;
                        sc.rval.last_seen = now.to_be_bytes();
                        let _ = FWD_CT_REPLY.insert(&v.reply, &sc.rval, BPF_ANY as u64);
                    }
                    None => {}
                }
                if check {
                    v.checked = now.to_be_bytes();
                }
            }
            if alive {
                v.state = state;
                v.last_seen = now.to_be_bytes();
                return Ok((u16::from_be_bytes(v.reply.dport), false));
            }
            // Idled out: start over, preferring the same port (same mapping if still free).
            prefer = u16::from_be_bytes(v.reply.dport) as u32;
        }
        // Otherwise the route or the SNAT address changed: replace the entry.
    } else if sc.key.proto == PROTO_TCP && !(tcp_flags & TCP_SYN != 0 && tcp_flags & TCP_ACK == 0) {
        // Mid-stream TCP without a connection: started before XDP took over, or by the LAN
        // side (this is a reply); the kernel's connection tracking owns it.
        return Err(TunCounter::PassNoMatch);
    }
    // Field by field, padding untouched (always zero in the scratch map): building the
    // whole struct would zero the padding with a `memset` call. `allocate` inserts the reply
    // entry (its `orig` is filled in there).
    let flags = if via6 { CT_FLAG_VIA6 } else { 0 };
    let state = CtState::initial(sc.key.proto).next(false, tcp_flags) as u8;
    sc.rval.flags = flags;
    sc.rval.state = state;
    sc.rval.last_seen = now.to_be_bytes();
    let port = allocate(cfg, sc, prefer);
    if port == 0 {
        return Err(TunCounter::PassNoPort);
    }
    sc.oval.reply = sc.rk;
    sc.oval.flags = flags;
    sc.oval.state = state;
    sc.oval.last_seen = now.to_be_bytes();
    sc.oval.checked = now.to_be_bytes();
    if FWD_CT_ORIG
        .insert(&sc.key, &sc.oval, BPF_ANY as u64)
        .is_err()
    {
        return Err(TunCounter::PassNoPort);
    }
    Ok((port as u16, true))
}

/// An IPv4 address in the first 4 bytes of a 16-byte key field. (Built from a register
/// value: a zero-filled array would compile to a `memset` call.)
#[inline(always)]
fn v4_in_16(a: [u8; 4]) -> [u8; 16] {
    ((u32::from_be_bytes(a) as u128) << 96).to_be_bytes()
}

#[inline(never)]
fn v4_plan(ctx: &XdpContext, cfg: &FwdConfig) -> u32 {
    match v4_plan_inner(ctx, cfg) {
        Ok(()) => GO,
        Err(v) => pack(v),
    }
}

/// IPv4, planning: checks, parses, routes (nothing modified). `Err` is a final verdict.
#[inline(always)]
fn v4_plan_inner(ctx: &XdpContext, cfg: &FwdConfig) -> Result<(), (u32, TunCounter)> {
    let stop = |c: TunCounter| Err(pass(c));
    let Some(ip) = read::<Ipv4Hdr>(ctx, 0) else {
        return stop(TunCounter::PassUnsupported);
    };
    let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
    let tot = u16::from_be_bytes(ip.tot_len) as usize;
    if ihl < 20 || tot < ihl || tot != packet_len(ctx) {
        return stop(TunCounter::PassUnsupported);
    }
    if !is_tailnet_v4(ip.src) {
        return stop(TunCounter::PassNoMatch);
    }
    let Some(adv) = adv_v4(ip.dst) else {
        return stop(TunCounter::PassNoMatch);
    };
    // MF set or a fragment offset: fragments are the kernel's.
    if ip.frag_off[0] & 0x3f != 0 || ip.frag_off[1] != 0 {
        return stop(TunCounter::PassUnsupported);
    }
    let df = ip.frag_off[0] & 0x40 != 0;
    let proto = ip.protocol;
    let l4_len = tot - ihl;
    let l4 = match parse_l4(ctx, ihl, proto, l4_len, true) {
        Ok(l4) => l4,
        Err(PARSE_NO_MATCH) => return stop(TunCounter::PassNoMatch),
        Err(_) => return stop(TunCounter::PassUnsupported),
    };
    if ip.ttl <= 1 {
        return stop(TunCounter::PassTtl);
    }
    let snat = cfg.has_flag(FWD_FLAG_SNAT);
    let partial = proto == PROTO_TCP
        && looks_partial(
            ctx,
            l4.csum,
            ihl,
            l4_len,
            pseudo4(&ip.src, &ip.dst, proto, l4_len),
        );
    let Some(sc) = scratch() else {
        return stop(TunCounter::PassUnsupported);
    };
    let q = RouteQuery {
        src: ip.src,
        dst: ip.dst,
        proto,
        ports: (l4.sport, l4.dport),
        tot_len: tot,
        table: u32::from_be_bytes(adv.table),
        partial,
        df,
        nat: snat,
    };
    let (plan, counter) = match route(ctx, &mut sc.fib, &q) {
        Ok(r) => r,
        // The kernel answers with "fragmentation needed" about the packet as the client sent
        // it: leave it untouched.
        Err(Stop::TooBig(_)) => return stop(TunCounter::PassTooBig),
        Err(Stop::Pass(c)) => return stop(c),
    };
    let out_if = sc.fib.ifindex;
    let Some(eg) = egress(out_if) else {
        return stop(TunCounter::PassFib);
    };
    let redirect = plan == Plan::Redirect;
    if !snat && !redirect {
        // Nothing to rewrite: the kernel forwards it as it is.
        return stop(counter);
    }
    if snat {
        // Field by field, padding untouched (always zero in the scratch map): building the
        // whole struct would zero the padding with a `memset` call.
        sc.key.proto = proto;
        sc.key.family = CT_FAMILY_V4;
        sc.key.sport = l4.sport;
        sc.key.dport = l4.dport;
        sc.key.src = v4_in_16(ip.src);
        sc.key.dst = v4_in_16(ip.dst);
        sc.rk.ifindex = out_if.to_be_bytes();
        sc.rk.proto = proto;
        sc.rk.src = ip.dst;
        sc.rk.dst = eg.snat_v4;
        sc.rk.sport = l4.dport;
        sc.rk.dport = [0; 2];
    }
    let p = &mut sc.plan;
    p.l4 = l4;
    p.counter = counter.index();
    p.out_if = out_if;
    p.snat = if snat { eg.snat_v4 } else { ip.src };
    p.new_sport = l4.sport;
    p.nat = snat;
    p.partial = partial;
    p.redirect = redirect;
    Ok(())
}

#[inline(never)]
fn v4_rewrite(ctx: &XdpContext) -> u32 {
    match v4_rewrite_inner(ctx) {
        Ok((action, counter)) => action | (counter << 8),
        Err(()) => pack((DROP, TunCounter::DropError)),
    }
}

/// IPv4, rewriting: source address and port (SNAT), TTL (when forwarding), checksums; then
/// redirect with the FIB's Ethernet header, or pass with the link-layer header generic XDP
/// needs. `Err`: a helper failed after the packet was modified.
#[inline(always)]
fn v4_rewrite_inner(ctx: &XdpContext) -> Result<(u32, u32), ()> {
    let (Some(ip), Some(sc)) = (read::<Ipv4Hdr>(ctx, 0), scratch()) else {
        return Err(());
    };
    let p = &sc.plan;
    let l4 = &p.l4;
    let (proto, new_src, new_sport) = (ip.protocol, p.snat, p.new_sport);
    // (Offsets from the packet, not from the plan: map values are unbounded for the verifier.)
    let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
    let ttl = if p.redirect { ip.ttl - 1 } else { ip.ttl };
    let ip_csum = csum_update(
        u16::from_be_bytes(ip.check),
        sum4(&ip.src) + w16([ip.ttl, proto]),
        sum4(&new_src) + w16([ttl, proto]),
    );
    let mut hdr = ip;
    hdr.src = new_src;
    hdr.ttl = ttl;
    hdr.check = ip_csum.to_be_bytes();
    if !write(ctx, 0, hdr) {
        return Err(());
    }
    // Transport: port / echo ID and checksum. Only the source address and port change.
    let old = l4.csum;
    let csum = if l4.echo {
        csum_update(old, w16(l4.sport), w16(new_sport))
    } else if p.partial {
        csum_update_partial(old, sum4(&ip.src), sum4(&new_src))
    } else if proto == 17 && old == 0 {
        0
    } else {
        let c = csum_update(
            old,
            sum4(&ip.src) + w16(l4.sport),
            sum4(&new_src) + w16(new_sport),
        );
        if proto == 17 {
            udp_wire(c)
        } else {
            c
        }
    };
    let (port_off, csum_off) = if l4.echo {
        (ihl + 4, ihl + 2)
    } else if proto == 17 {
        (ihl, ihl + 6)
    } else {
        (ihl, ihl + 16)
    };
    if !write(ctx, port_off, new_sport) || !write(ctx, csum_off, csum.to_be_bytes()) {
        return Err(());
    }
    let counter = p.counter & 0xffff;
    if p.redirect {
        if !adjust_head(ctx, -14) {
            return Err(());
        }
        if !write(ctx, 0, eth_bytes(sc.fib.dmac, sc.fib.smac, ETH_P_IPV4)) {
            return Err(());
        }
        // SAFETY: plain helper call with an ifindex and no flags.
        let act = unsafe { bpf_redirect(p.out_if, 0) } as u32;
        Ok((act, counter))
    } else if write_fake_l2_before(ctx, ETH_P_IPV4) {
        Ok((PASS, counter))
    } else {
        Err(())
    }
}

#[inline(never)]
fn via6_parse(ctx: &XdpContext) -> u32 {
    match via6_parse_inner(ctx) {
        Ok(()) => GO,
        Err(v) => pack(v),
    }
}

/// 4via6, parsing (nothing modified; the plan and the connection key go to scratch).
#[inline(always)]
fn via6_parse_inner(ctx: &XdpContext) -> Result<(), (u32, TunCounter)> {
    let stop = |c: TunCounter| Err(pass(c));
    let Some(ip) = read::<Ipv6Hdr>(ctx, 0) else {
        return stop(TunCounter::PassUnsupported);
    };
    let plen = u16::from_be_bytes(ip.payload_len) as usize;
    if plen + 40 != packet_len(ctx) {
        return stop(TunCounter::PassUnsupported);
    }
    let d = ip.dst;
    if [d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]] != VIA_PREFIX {
        return stop(TunCounter::PassNoMatch);
    }
    let Some(adv) = adv_via(d) else {
        return stop(TunCounter::PassNoMatch);
    };
    let target = [d[12], d[13], d[14], d[15]];
    if is_forbidden_via_target(target) || d[8] != 0 || d[9] != 0 {
        return stop(TunCounter::PassUnsupported);
    }
    let nh = ip.next_hdr;
    if nh != 6 && nh != 17 && nh != PROTO_ICMPV6 {
        // Extension headers (fragment header included) and other protocols.
        return stop(TunCounter::PassUnsupported);
    }
    let l4 = match parse_l4(ctx, 40, nh, plen, true) {
        Ok(l4) => l4,
        Err(PARSE_NO_MATCH) => return stop(TunCounter::PassNoMatch),
        Err(_) => return stop(TunCounter::PassUnsupported),
    };
    if ip.hop_limit <= 1 {
        return stop(TunCounter::PassTtl);
    }
    let pseudo_old = pseudo6(&ip.src, &ip.dst, nh, plen);
    if nh == PROTO_TCP && looks_partial(ctx, l4.csum, 40, plen, pseudo_old) {
        // A GSO super-packet: its skb keeps the IPv6 GSO type, which the kernel cannot
        // segment as IPv4. The daemon must not coalesce 4via6 packets (see the loader docs).
        return stop(TunCounter::PassUnsupported);
    }
    let Some(sc) = scratch() else {
        return stop(TunCounter::PassUnsupported);
    };
    let xproto = if nh == PROTO_ICMPV6 { PROTO_ICMP } else { nh };
    // Field by field, padding untouched (always zero in the scratch map): building the
    // whole struct would zero the padding with a `memset` call.
    sc.key.proto = xproto;
    sc.key.family = CT_FAMILY_V6;
    sc.key.sport = l4.sport;
    sc.key.dport = l4.dport;
    sc.key.src = ip.src;
    sc.key.dst = ip.dst;
    let vtf = ip.version_tc_flow;
    let p = &mut sc.plan;
    p.l4 = l4;
    p.pseudo_old = pseudo_old;
    p.plen = plen as u32;
    p.table = u32::from_be_bytes(adv.table);
    p.target = target;
    p.nh = nh;
    p.xproto = xproto;
    p.ttl = ip.hop_limit;
    p.tos = ((vtf[0] & 0x0f) << 4) | (vtf[1] >> 4);
    p.df = plen + 20 > DF_THRESHOLD;
    // What generic XDP compares to decide whether to re-derive the protocol (`fake_l2`).
    p.odd_first = vtf[0] & 1 == 1;
    p.src45 = [ip.src[4], ip.src[5]];
    Ok(())
}

#[inline(never)]
fn via6_route(ctx: &XdpContext) -> u32 {
    match via6_route_inner(ctx) {
        Ok(()) => GO,
        Err(Some(v)) => pack(v),
        Err(None) => TOO_BIG,
    }
}

/// 4via6, routing (nothing modified). `Ok`: go on; `Err(Some(verdict))`: final, packet
/// untouched; `Err(None)`: too big (MTU in the plan).
#[inline(always)]
fn via6_route_inner(ctx: &XdpContext) -> Result<(), Option<(u32, TunCounter)>> {
    let stop = |c: TunCounter| Err(Some(pass(c)));
    let Some(sc) = scratch() else {
        return stop(TunCounter::PassUnsupported);
    };
    let q = RouteQuery {
        src: [0; 4],
        dst: sc.plan.target,
        proto: sc.plan.xproto,
        ports: (sc.plan.l4.sport, sc.plan.l4.dport),
        tot_len: sc.plan.plen as usize + 20,
        table: sc.plan.table,
        partial: false,
        df: sc.plan.df,
        nat: true,
    };
    let (plan, mut counter) = match route(ctx, &mut sc.fib, &q) {
        Ok(r) => r,
        Err(Stop::TooBig(mtu)) => {
            sc.plan.mtu = mtu;
            return Err(None);
        }
        Err(Stop::Pass(c)) => return stop(c),
    };
    if counter == TunCounter::FwdV4 {
        counter = TunCounter::FwdVia6;
    }
    let out_if = sc.fib.ifindex;
    let Some(eg) = egress(out_if) else {
        return stop(TunCounter::PassFib);
    };
    let redirect = plan == Plan::Redirect;
    // Generic XDP re-derives the protocol from a link-layer header only if the first 14 bytes
    // changed in what it compares (see `fwd::fake_l2`); for an IPv6 packet whose first byte
    // is odd and whose source bytes 4..6 equal the SNAT address's first two bytes it would
    // not, and the IPv4 packet would reach the IPv6 stack.
    if !redirect && sc.plan.odd_first && sc.plan.src45 == [eg.snat_v4[0], eg.snat_v4[1]] {
        return Err(Some((DROP, TunCounter::DropError)));
    }
    // Field by field, padding untouched (always zero in the scratch map): building the
    // whole struct would zero the padding with a `memset` call.
    sc.rk.ifindex = out_if.to_be_bytes();
    sc.rk.proto = sc.plan.xproto;
    sc.rk.src = sc.plan.target;
    sc.rk.dst = eg.snat_v4;
    sc.rk.sport = sc.plan.l4.dport;
    sc.rk.dport = [0; 2];
    let p = &mut sc.plan;
    p.counter = counter.index();
    p.out_if = out_if;
    p.snat = eg.snat_v4;
    p.nat = true;
    p.redirect = redirect;
    if redirect {
        p.ttl -= 1;
    }
    Ok(())
}

#[inline(never)]
fn via6_rewrite(ctx: &XdpContext) -> u32 {
    match via6_rewrite_inner(ctx) {
        // The plan's counter index (`PassNoNeigh`, `PassFragment` or `FwdVia6`).
        Ok((action, counter)) => action | (counter << 8),
        Err(()) => pack((DROP, TunCounter::DropError)),
    }
}

/// `Err`: a helper failed after the packet was modified.
#[inline(always)]
fn via6_rewrite_inner(ctx: &XdpContext) -> Result<(u32, u32), ()> {
    let Some(sc) = scratch() else {
        return Err(());
    };
    let p = &sc.plan;
    let l4 = &p.l4;
    let counter = p.counter & 0xffff;

    // Transport checksum: IPv6 pseudo-header out, IPv4 pseudo-header in (none for ICMP).
    let old = l4.csum;
    let csum = if l4.echo {
        csum_update(
            old,
            p.pseudo_old + w16([128, l4.code]) + w16(l4.sport),
            w16([8, l4.code]) + w16(p.new_sport),
        )
    } else if p.nh == 17 && old == 0 {
        // Invalid in IPv6; left as it is (as `nat::translate`).
        0
    } else {
        let c = csum_update(
            old,
            p.pseudo_old + w16(l4.sport),
            pseudo4(&p.snat, &p.target, p.xproto, p.plen as usize) + w16(p.new_sport),
        );
        if p.nh == 17 {
            udp_wire(c)
        } else {
            c
        }
    };
    if l4.echo {
        if !write(ctx, 40, [8u8, l4.code]) || !write(ctx, 44, p.new_sport) {
            return Err(());
        }
    } else if !write(ctx, 40, p.new_sport) {
        return Err(());
    }
    // (Not `l4.csum_off`: a value read back from a map is unbounded for the verifier.)
    let csum_off = if l4.echo {
        2
    } else if p.nh == 17 {
        6
    } else {
        16
    };
    if !write(ctx, 40 + csum_off, csum.to_be_bytes()) {
        return Err(());
    }

    // IPv4 header at bytes 20..40 (the L4 header stays where it is), link-layer header at
    // 6..20: the real one for a redirect, the one generic XDP needs for a pass.
    // SAFETY: the helper has no preconditions.
    let id = (unsafe { bpf_get_prandom_u32() } as u16).to_be_bytes();
    let tl = ((p.plen + 20) as u16).to_be_bytes();
    let frag = if p.df { 0x40u8 } else { 0 };
    let (snat, target) = (p.snat, p.target);
    let mut h: [u8; 20] = [
        0x45, p.tos, tl[0], tl[1], id[0], id[1], frag, 0, p.ttl, p.xproto, 0, 0, snat[0], snat[1],
        snat[2], snat[3], target[0], target[1], target[2], target[3],
    ];
    let mut s: u64 = 0;
    let mut i = 0;
    while i < 20 {
        s += w16([h[i], h[i + 1]]);
        i += 2;
    }
    let c = (!fold(s)).to_be_bytes();
    h[10] = c[0];
    h[11] = c[1];
    if !write(ctx, 20, h) {
        return Err(());
    }
    let l2 = if p.redirect {
        eth_bytes(sc.fib.dmac, sc.fib.smac, ETH_P_IPV4)
    } else {
        fake_l2(ETH_P_IPV4)
    };
    if !write(ctx, 6, l2) {
        return Err(());
    }
    if p.redirect {
        if !adjust_head(ctx, 6) {
            return Err(());
        }
        // SAFETY: plain helper call with an ifindex and no flags.
        let act = unsafe { bpf_redirect(p.out_if, 0) } as u32;
        Ok((act, counter))
    } else if adjust_head(ctx, 20) {
        Ok((PASS, counter))
    } else {
        Err(())
    }
}

/// Bytes of the original packet an ICMPv6 error quotes so that it is 1280 bytes long.
const PTB_QUOTE: usize = 1280 - 48;

/// Turns a 4via6 packet too big for the LAN (longer than 1280 bytes, since only those get DF
/// after translation) into an ICMPv6 "packet too big" to its sender, from the 4via6 address it
/// was sent to, and transmits it back into the TUN (the daemon reads and tunnels it).
#[inline(never)]
fn icmp6_too_big(ctx: &XdpContext) -> u32 {
    pack(icmp6_too_big_inner(ctx))
}

#[inline(always)]
fn icmp6_too_big_inner(ctx: &XdpContext) -> (u32, TunCounter) {
    let Some(sc) = scratch() else {
        return pass(TunCounter::PassUnsupported);
    };
    let mtu4 = sc.plan.mtu;
    let Some(ip) = read::<Ipv6Hdr>(ctx, 0) else {
        return pass(TunCounter::PassUnsupported);
    };
    // (No early length check on `data_end - data`: the compiler would use it to drop the
    // per-word bounds checks below, which the verifier needs.)
    let Some(quote) = sum_packet::<{ PTB_QUOTE / 4 }>(ctx, 0, PTB_QUOTE) else {
        return pass(TunCounter::PassUnsupported);
    };
    let mtu = if mtu4 + 20 < 1280 { 1280 } else { mtu4 + 20 };
    let (src, dst) = (ip.dst, ip.src);
    let icmp_len = 8 + PTB_QUOTE;
    let sum = pseudo6(&src, &dst, PROTO_ICMPV6, icmp_len)
        + w16([2, 0])
        + (mtu >> 16) as u64
        + (mtu & 0xffff) as u64
        + quote;
    let c = (!fold(sum)).to_be_bytes();
    let m = mtu.to_be_bytes();
    let pl = (icmp_len as u16).to_be_bytes();
    if !adjust_head(ctx, -(14 + 48)) {
        return (DROP, TunCounter::DropError);
    }
    let hdr = Ipv6Hdr {
        version_tc_flow: [0x60, 0, 0, 0],
        payload_len: pl,
        next_hdr: PROTO_ICMPV6,
        hop_limit: 64,
        src,
        dst,
    };
    if !write(ctx, 0, fake_l2(ETH_P_IPV6))
        || !write(ctx, 14, hdr)
        || !write(ctx, 54, [2u8, 0, c[0], c[1], m[0], m[1], m[2], m[3]])
    {
        return (DROP, TunCounter::DropError);
    }
    let delta = (14 + 48 + PTB_QUOTE) as i32 - packet_len(ctx) as i32;
    // SAFETY: `ctx.ctx` is this program's context; shrinking the tail is always in bounds of
    // the buffer.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 || !adjust_head(ctx, 14) {
        return (DROP, TunCounter::DropError);
    }
    (xdp_action::XDP_TX, TunCounter::IcmpTooBig)
}
