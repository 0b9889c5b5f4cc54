//! Shared pieces of the subnet-forwarding programs `tun_forward` and `lan_return`: their maps,
//! header layouts beyond `helpers`, Internet-checksum arithmetic (RFC 1071/1624, the same
//! formulas as the userspace `nat::checksum`, so both produce identical bytes), the connection
//! table (lookup, expiry, port allocation), `bpf_fib_lookup` and L2 helpers.
//!
//! Map layouts and semantics: `gateway_common::forward`.

use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_ANY, BPF_FIB_LOOKUP_DIRECT, BPF_FIB_LOOKUP_TBID, BPF_NOEXIST},
    helpers::{bpf_fib_lookup as fib_lookup_helper, bpf_ktime_get_coarse_ns, bpf_xdp_adjust_head},
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use gateway_common::forward::{
    ct_last_seen, AdvV4, AdvVia, CtOrigKey, CtOrigVal, CtReplyKey, CtReplyVal, FwdConfig,
    FwdEgress, FWD_ADV_MAX_DEFAULT, FWD_CT_MAX_DEFAULT, FWD_EGRESS_MAX,
};

#[map]
pub static FWD_CONFIG: Array<FwdConfig> = Array::with_max_entries(1, 0);

#[map]
pub static FWD_EGRESS: HashMap<[u8; 4], FwdEgress> = HashMap::with_max_entries(FWD_EGRESS_MAX, 0);

#[map]
pub static FWD_ADV_V4: LpmTrie<[u8; 4], AdvV4> = LpmTrie::with_max_entries(FWD_ADV_MAX_DEFAULT, 0);

#[map]
pub static FWD_ADV_VIA: LpmTrie<[u8; 16], AdvVia> =
    LpmTrie::with_max_entries(FWD_ADV_MAX_DEFAULT, 0);

#[map]
pub static FWD_CT_ORIG: LruHashMap<CtOrigKey, CtOrigVal> =
    LruHashMap::with_max_entries(FWD_CT_MAX_DEFAULT, 0);

#[map]
pub static FWD_CT_REPLY: LruHashMap<CtReplyKey, CtReplyVal> =
    LruHashMap::with_max_entries(FWD_CT_MAX_DEFAULT, 0);

/// Per-CPU scratch space for the larger temporaries (the BPF stack has 512 bytes in all).
/// XDP programs do not nest on a CPU, so one entry per CPU is enough.
#[repr(C)]
pub struct Scratch {
    pub fib: bpf_fib_lookup,
    pub key: CtOrigKey,
    pub rk: CtReplyKey,
    pub oval: CtOrigVal,
    pub rval: CtReplyVal,
    pub plan: FwdPlan,
}

/// What `tun_forward`'s planning steps hand to its connection and rewriting steps.
#[repr(C)]
pub struct FwdPlan {
    pub l4: L4,
    /// IPv6 pseudo-header sum of the packet.
    pub pseudo_old: u64,
    /// `TunCounter` index of the outcome.
    pub counter: u32,
    pub out_if: u32,
    /// Egress MTU when the packet is too big.
    pub mtu: u32,
    /// IPv6 payload length (= translated L4 length).
    pub plen: u32,
    pub snat: [u8; 4],
    pub target: [u8; 4],
    pub new_sport: [u8; 2],
    pub nh: u8,
    pub xproto: u8,
    pub ttl: u8,
    pub tos: u8,
    pub df: bool,
    pub redirect: bool,
    /// Routing table of the 4via6 route.
    pub table: u32,
    /// First byte of the IPv6 header odd, and IPv6 source bytes 4..6 (see `via6_route`).
    pub odd_first: bool,
    pub src45: [u8; 2],
    /// The packet needs NAT (a connection entry; `snat`/`new_sport` are the new source).
    pub nat: bool,
    /// IPv4: the TCP checksum is partial (GSO).
    pub partial: bool,
}

#[map]
pub static FWD_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch entry.
#[inline(always)]
pub fn scratch<'a>() -> Option<&'a mut Scratch> {
    // SAFETY: the kernel's pointer to this CPU's copy of the only element; nothing else uses it
    // while this program runs (no nesting, migration disabled), and every field is plain data
    // that is written before it is read.
    FWD_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

pub const AF_INET: u8 = 2;
pub use crate::helpers::{ETH_HDR_LEN, ETH_P_IPV4, ETH_P_IPV6};
/// Translated IPv4 packets longer than this get DF (RFC 7915 §5.1, as `nat::translate`).
pub const DF_THRESHOLD: usize = 1260;
/// The reply-entry check interval of `tun_forward` (LRU eviction can drop one half of a
/// connection): at most once per second per connection.
pub const CT_CHECK_INTERVAL_NS: u64 = 1_000_000_000;

pub use crate::helpers::{EthHdr, Ipv4Hdr, Ipv6Hdr};

/// UDP header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpHdr {
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

/// TCP header (only the fields used here are named).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpHdr {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub seq: [u8; 4],
    pub ack: [u8; 4],
    /// Data offset (high nibble).
    pub doff: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urgent: [u8; 2],
}

/// ICMP / ICMPv6 echo header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EchoHdr {
    pub typ: u8,
    pub code: u8,
    pub check: [u8; 2],
    pub id: [u8; 2],
    pub seq: [u8; 2],
}

/// `ctx->data` and `ctx->data_end`, loaded afresh (volatile) for every bounds check: the
/// compiler then cannot prove one check from another (e.g. skip a header's check because an
/// earlier length comparison implies it), which the verifier could not follow.
#[inline(always)]
pub fn bounds(ctx: &XdpContext) -> (usize, usize) {
    // SAFETY: `ctx.ctx` points to this invocation's `xdp_md`; plain field loads.
    unsafe {
        (
            core::ptr::read_volatile(&(*ctx.ctx).data) as usize,
            core::ptr::read_volatile(&(*ctx.ctx).data_end) as usize,
        )
    }
}

/// A mutable pointer to a `T` at `offset` if the whole `T` lies inside the packet.
#[inline(always)]
pub fn ptr_mut<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let (start, end) = bounds(ctx);
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Reads a `T` (alignment 1) at `offset`.
#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let p = ptr_mut::<T>(ctx, offset)?;
    // SAFETY: `ptr_mut` checked that the whole `T` lies inside the packet; callers only use
    // byte-array types and structs of them (alignment 1), for which any bit pattern is valid.
    Some(unsafe { p.read_unaligned() })
}

/// Writes a `T` (alignment 1) at `offset`; false if it does not fit in the packet.
#[inline(always)]
pub fn write<T>(ctx: &XdpContext, offset: usize, v: T) -> bool {
    match ptr_mut::<T>(ctx, offset) {
        Some(p) => {
            // SAFETY: `ptr_mut` checked that the whole `T` lies inside the packet, which the
            // program may write; the write is unaligned-safe.
            unsafe { p.write_unaligned(v) };
            true
        }
        None => false,
    }
}

/// Packet length (`data_end - data`).
#[inline(always)]
pub fn packet_len(ctx: &XdpContext) -> usize {
    let (start, end) = bounds(ctx);
    end - start
}

/// `bpf_xdp_adjust_head`; true on success. Every packet pointer is invalid afterwards.
#[inline(always)]
pub fn adjust_head(ctx: &XdpContext, delta: i32) -> bool {
    // SAFETY: `ctx.ctx` is the program's context pointer, valid for the whole invocation.
    unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) == 0 }
}

/// CLOCK_MONOTONIC in ns, at the kernel tick's resolution (CLOCK_MONOTONIC_COARSE, kernel
/// 5.11+). Connection timeouts are seconds long, and the coarse clock reads a variable where
/// the precise one reads the hardware clock, which in a VM costs tens of nanoseconds per
/// packet. It never runs ahead of CLOCK_MONOTONIC, which userspace compares it with.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

// ---------------------------------------------------------------------------------------------
// Checksums. Sums are unfolded big-endian 16-bit words in a u64.

#[inline(always)]
pub fn fold(s: u64) -> u16 {
    // Four steps reduce any u64 to 16 bits with end-around carry (bounded, no loop).
    let s = (s & 0xffff_ffff) + (s >> 32);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

#[inline(always)]
pub fn w16(b: [u8; 2]) -> u64 {
    u16::from_be_bytes(b) as u64
}

#[inline(always)]
pub fn sum4(a: &[u8; 4]) -> u64 {
    w16([a[0], a[1]]) + w16([a[2], a[3]])
}

#[inline(always)]
pub fn sum16(a: &[u8; 16]) -> u64 {
    w16([a[0], a[1]])
        + w16([a[2], a[3]])
        + w16([a[4], a[5]])
        + w16([a[6], a[7]])
        + w16([a[8], a[9]])
        + w16([a[10], a[11]])
        + w16([a[12], a[13]])
        + w16([a[14], a[15]])
}

/// RFC 1624 eq. 3 with whole sums (`nat::checksum::update_sums`).
#[inline(always)]
pub fn csum_update(csum: u16, removed: u64, added: u64) -> u16 {
    let acc = (!csum) as u64 + (!fold(removed)) as u64 + fold(added) as u64;
    !fold(acc)
}

/// The same update for a *partial* checksum field (CHECKSUM_PARTIAL / virtio NEEDS_CSUM: the
/// field holds the folded pseudo-header sum, not complemented; the data is summed later).
#[inline(always)]
pub fn csum_update_partial(field: u16, removed: u64, added: u64) -> u16 {
    !csum_update(!field, removed, added)
}

/// Sum of the IPv4 pseudo-header (`nat::translate::pseudo_sum`).
#[inline(always)]
pub fn pseudo4(src: &[u8; 4], dst: &[u8; 4], proto: u8, len: usize) -> u64 {
    sum4(src) + sum4(dst) + proto as u64 + ((len as u64) >> 16) + ((len as u64) & 0xffff)
}

/// Sum of the IPv6 pseudo-header.
#[inline(always)]
pub fn pseudo6(src: &[u8; 16], dst: &[u8; 16], next: u8, len: usize) -> u64 {
    sum16(src) + sum16(dst) + next as u64 + ((len as u64) >> 16) + ((len as u64) & 0xffff)
}

/// A UDP checksum as sent: a computed zero goes out as 0xffff.
#[inline(always)]
pub fn udp_wire(c: u16) -> u16 {
    if c == 0 {
        0xffff
    } else {
        c
    }
}

/// Unfolded sum of `len` packet bytes at `off` (big-endian words, odd byte padded), reading
/// at most `MAX_WORDS` 32-bit words plus a tail. `None` if the bytes are not in the packet or
/// `len` is too long.
#[inline(always)]
pub fn sum_packet<const MAX_WORDS: usize>(ctx: &XdpContext, off: usize, len: usize) -> Option<u64> {
    if len > MAX_WORDS * 4 + 3 || off > 0xffff {
        return None;
    }
    let words = len / 4;
    let mut sum: u64 = 0;
    let mut i: usize = 0;
    while i < MAX_WORDS {
        if i >= words {
            break;
        }
        let w: [u8; 4] = read(ctx, off + i * 4)?;
        sum += w16([w[0], w[1]]) + w16([w[2], w[3]]);
        i += 1;
    }
    let tail = off + words * 4;
    let rest = len & 3;
    if rest >= 2 {
        let w: [u8; 2] = read(ctx, tail)?;
        sum += w16(w);
    }
    if rest == 1 || rest == 3 {
        // The odd byte is read as the second of a 2-byte pair (off > 0, so the pair is in the
        // packet): a 1-byte bounds check compiles to `p >= data_end`, from which the verifier
        // learns no range when `p` has a variable offset.
        if tail + (rest & 2) == 0 {
            return None;
        }
        let b: [u8; 2] = read(ctx, tail + (rest & 2) - 1)?;
        sum += (b[1] as u64) << 8;
    }
    Some(sum)
}

// ---------------------------------------------------------------------------------------------
// Transport headers.

/// What `parse_l4` found.
#[derive(Clone, Copy)]
pub struct L4 {
    /// Flow ports: TCP/UDP ports; echo request (id, 0); echo reply (0, id).
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// TCP flags (0 otherwise).
    pub flags: u8,
    /// The checksum field.
    pub csum: u16,
    /// Offset of the checksum field from the start of the transport header.
    pub csum_off: usize,
    /// ICMP / ICMPv6 echo (`type_code` is then the type/code word).
    pub echo: bool,
    pub code: u8,
}

pub const PARSE_UNSUPPORTED: u8 = 1;
pub const PARSE_NO_MATCH: u8 = 2;

/// Parses the transport header at `off` (`len` bytes of L4 declared by the IP header). For ICMP,
/// `request` selects which echo type is accepted (request on the tailnet side, reply on the
/// LAN side); the other echo type is `PARSE_NO_MATCH`, anything else `PARSE_UNSUPPORTED`.
#[inline(always)]
pub fn parse_l4(
    ctx: &XdpContext,
    off: usize,
    proto: u8,
    len: usize,
    request: bool,
) -> Result<L4, u8> {
    match proto {
        6 => {
            if len < 20 {
                return Err(PARSE_UNSUPPORTED);
            }
            let t: TcpHdr = read(ctx, off).ok_or(PARSE_UNSUPPORTED)?;
            let doff = ((t.doff >> 4) as usize) * 4;
            if doff < 20 || doff > len {
                return Err(PARSE_UNSUPPORTED);
            }
            Ok(L4 {
                sport: t.sport,
                dport: t.dport,
                flags: t.flags,
                csum: u16::from_be_bytes(t.check),
                csum_off: 16,
                echo: false,
                code: 0,
            })
        }
        17 => {
            if len < 8 {
                return Err(PARSE_UNSUPPORTED);
            }
            let u: UdpHdr = read(ctx, off).ok_or(PARSE_UNSUPPORTED)?;
            let ulen = u16::from_be_bytes(u.len) as usize;
            if ulen < 8 || ulen > len {
                return Err(PARSE_UNSUPPORTED);
            }
            Ok(L4 {
                sport: u.src_port,
                dport: u.dst_port,
                flags: 0,
                csum: u16::from_be_bytes(u.check),
                csum_off: 6,
                echo: false,
                code: 0,
            })
        }
        1 | 58 => {
            if len < 8 {
                return Err(PARSE_UNSUPPORTED);
            }
            let e: EchoHdr = read(ctx, off).ok_or(PARSE_UNSUPPORTED)?;
            let (req, rep) = if proto == 1 { (8, 0) } else { (128, 129) };
            let is_req = e.typ == req;
            if !is_req && e.typ != rep {
                return Err(PARSE_UNSUPPORTED);
            }
            if is_req != request {
                return Err(PARSE_NO_MATCH);
            }
            let (sport, dport) = if is_req {
                (e.id, [0, 0])
            } else {
                ([0, 0], e.id)
            };
            Ok(L4 {
                sport,
                dport,
                flags: 0,
                csum: u16::from_be_bytes(e.check),
                csum_off: 2,
                echo: true,
                code: e.code,
            })
        }
        _ => Err(PARSE_UNSUPPORTED),
    }
}

/// Whether a TCP/UDP checksum field `csum` is *partial* (CHECKSUM_PARTIAL / virtio
/// NEEDS_CSUM: the folded pseudo-header sum, completed over the data later by the stack or the
/// NIC). Such packets come from local software: GSO super-packets the daemon writes into the
/// TUN, or LAN hosts behind veth/tap on the same machine. `pseudo` is the pseudo-header sum
/// including the L4 length. A complete checksum equals that value only by chance (about 1 in
/// 65536); for segments that fit in `VERIFY_WORDS` that case is told apart by verifying the
/// checksum over the whole segment.
#[inline(always)]
pub fn looks_partial(
    ctx: &XdpContext,
    csum: u16,
    l4_off: usize,
    l4_len: usize,
    pseudo: u64,
) -> bool {
    if csum != fold(pseudo) {
        return false;
    }
    const VERIFY_WORDS: usize = 375; // 1500 bytes
    match sum_packet::<VERIFY_WORDS>(ctx, l4_off, l4_len) {
        // A valid complete checksum makes the whole sum 0xffff.
        Some(s) => fold(s + pseudo) != 0xffff,
        None => true,
    }
}

// ---------------------------------------------------------------------------------------------
// Connection table.

/// Hash of the original tuple for the port choice.
#[inline(always)]
fn hash_key(k: &CtOrigKey, seed: u32) -> u32 {
    #[inline(always)]
    fn mix(h: u32, w: u32) -> u32 {
        let h = (h ^ w).wrapping_mul(0x85eb_ca6b);
        h ^ (h >> 13)
    }
    let s = &k.src;
    let d = &k.dst;
    let mut h = seed ^ 0x9e37_79b9;
    h = mix(
        h,
        u32::from_be_bytes([k.proto, k.family, k.sport[0], k.sport[1]]),
    );
    h = mix(h, u32::from_be_bytes([k.dport[0], k.dport[1], 0, 0]));
    h = mix(h, u32::from_be_bytes([s[0], s[1], s[2], s[3]]));
    h = mix(h, u32::from_be_bytes([s[4], s[5], s[6], s[7]]));
    h = mix(h, u32::from_be_bytes([s[8], s[9], s[10], s[11]]));
    h = mix(h, u32::from_be_bytes([s[12], s[13], s[14], s[15]]));
    h = mix(h, u32::from_be_bytes([d[0], d[1], d[2], d[3]]));
    h = mix(h, u32::from_be_bytes([d[12], d[13], d[14], d[15]]));
    h ^ (h >> 16)
}

/// Tries to take reply tuple `sc.rk` for connection `sc.key`: free, already ours, or held by
/// a connection that is gone, idle or moved on.
///
/// Its own BPF subprogram: after the call only the result differs between the paths through
/// it, so the verifier's states converge at every probe of `allocate`'s loop. (`allocate` is
/// the costliest part to verify; `tun_forward` calls it from just two states for the same
/// reason, see `ct_step`.)
#[inline(never)]
fn claim_sub(sc: &mut Scratch, now: u64, cfg: &FwdConfig) -> u32 {
    claim(sc, now, cfg) as u32
}

#[inline(always)]
fn claim(sc: &mut Scratch, now: u64, cfg: &FwdConfig) -> bool {
    sc.rval.orig = sc.key;
    match FWD_CT_REPLY.get_ptr(&sc.rk) {
        None => FWD_CT_REPLY
            .insert(&sc.rk, &sc.rval, BPF_NOEXIST as u64)
            .is_ok(),
        Some(p) => {
            // SAFETY: a non-null value pointer returned by the kernel for this map, read in
            // place (map values may be helper arguments).
            let held = unsafe { &*p };
            let owner = &held.orig;
            if *owner == sc.key {
                // Ours already (the same connection starting over): new flags, state, stamp.
                return FWD_CT_REPLY
                    .insert(&sc.rk, &sc.rval, BPF_ANY as u64)
                    .is_ok();
            }
            let stale = match FWD_CT_ORIG.get_ptr(owner) {
                None => true,
                Some(o) => {
                    // SAFETY: as above, for the other map.
                    let o = unsafe { &*o };
                    o.reply != sc.rk || cfg.expired(o.state, ct_last_seen(o, held), now)
                }
            };
            stale
                && FWD_CT_REPLY
                    .insert(&sc.rk, &sc.rval, BPF_ANY as u64)
                    .is_ok()
        }
    }
}

/// Number of hashed probes after the preferred ports.
const PORT_PROBES: u32 = 24;

/// Picks the SNAT port (or echo ID) for a new connection `sc.key` whose replies will match
/// `sc.rk` (its `dport` is filled in here) and claims it in the reply map. Tries `prefer` (the
/// port of an idled-out entry of the same connection), then the original source port / echo
/// ID when it is in range, then hashed probes. Returns the port, or 0 if none is free.
#[inline(never)]
pub fn allocate(cfg: &FwdConfig, sc: &mut Scratch, prefer: u32) -> u32 {
    let now = now_ns();
    let lo = cfg.port_min() as u32;
    let hi = cfg.port_max() as u32;
    if lo > hi || lo == 0 {
        return 0;
    }
    let span = hi - lo + 1;
    if span == 0 {
        // Unreachable (hi < 65536); tells the compiler the modulo below cannot divide by 0.
        return 0;
    }
    if prefer >= lo && prefer <= hi {
        sc.rk.dport = (prefer as u16).to_be_bytes();
        if claim_sub(sc, now, cfg) != 0 {
            return prefer;
        }
    }
    let wanted = u16::from_be_bytes(sc.key.sport) as u32;
    if wanted != prefer && wanted >= lo && wanted <= hi {
        sc.rk.dport = (wanted as u16).to_be_bytes();
        if claim_sub(sc, now, cfg) != 0 {
            return wanted;
        }
    }
    let start = hash_key(&sc.key, cfg.seed()) % span;
    let mut k: u32 = 0;
    while k < PORT_PROBES {
        let port = lo + (start + k) % span;
        sc.rk.dport = (port as u16).to_be_bytes();
        if claim_sub(sc, now, cfg) != 0 {
            return port;
        }
        k += 1;
    }
    0
}

// ---------------------------------------------------------------------------------------------
// Routing and L2.

/// `bpf_fib_lookup` for an IPv4 packet entering on `ifindex` into `p` (`tot_len` 0: no MTU
/// check). `table` selects a routing table (`BPF_FIB_LOOKUP_TBID`), 0 the normal lookup.
/// Returns the helper's result (`BPF_FIB_LKUP_RET_*` or a negative error).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn fib_lookup_v4(
    ctx: &XdpContext,
    p: &mut bpf_fib_lookup,
    ifindex: u32,
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    ports: ([u8; 2], [u8; 2]),
    tot_len: u16,
    table: u32,
) -> i64 {
    // Every input field the helper reads for AF_INET is written (the rest are outputs); no
    // zeroing of the whole struct, which would cost a `memset` call per lookup.
    p.family = AF_INET;
    p.l4_protocol = proto;
    p.sport = u16::from_ne_bytes(ports.0);
    p.dport = u16::from_ne_bytes(ports.1);
    p.__bindgen_anon_1.tot_len = tot_len;
    p.ifindex = ifindex;
    p.__bindgen_anon_2.flowinfo = 0; // tos
    p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    p.__bindgen_anon_5.tbid = table;
    let flags = if table != 0 {
        BPF_FIB_LOOKUP_TBID | BPF_FIB_LOOKUP_DIRECT
    } else {
        0
    };
    // SAFETY: `p` is a valid, initialised `bpf_fib_lookup` (scratch map memory) and its size is
    // passed; `ctx.ctx` is this program's context.
    unsafe {
        fib_lookup_helper(
            ctx.ctx as *mut _,
            p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            flags,
        )
    }
}

/// The configured egress interface `ifindex`, if it is one.
#[inline(always)]
pub fn egress(ifindex: u32) -> Option<FwdEgress> {
    // SAFETY: value pointers returned by the kernel are valid for this invocation; `FwdEgress`
    // is plain bytes.
    FWD_EGRESS
        .get_ptr(&ifindex.to_be_bytes())
        .map(|p| unsafe { p.read_unaligned() })
}

/// Ethernet header bytes.
#[inline(always)]
pub fn eth_bytes(dst: [u8; 6], src: [u8; 6], proto: [u8; 2]) -> [u8; 14] {
    [
        dst[0], dst[1], dst[2], dst[3], dst[4], dst[5], src[0], src[1], src[2], src[3], src[4],
        src[5], proto[0], proto[1],
    ]
}

/// The link-layer header that generic XDP on an L3 device (the TUN) needs in front of a
/// packet that is passed (or transmitted) after the program changed its first bytes: the
/// kernel then re-derives `skb->protocol` from an Ethernet header it expects right before the
/// data (`eth_type_trans`). All-zero addresses equal the TUN's (empty) device address, so the
/// packet stays `PACKET_HOST`.
#[inline(always)]
pub fn fake_l2(proto: [u8; 2]) -> [u8; 14] {
    eth_bytes([0; 6], [0; 6], proto)
}

/// Writes `fake_l2(proto)` into the 14 bytes before the packet (headroom) without moving it.
#[inline(always)]
pub fn write_fake_l2_before(ctx: &XdpContext, proto: [u8; 2]) -> bool {
    if !adjust_head(ctx, -(ETH_HDR_LEN as i32)) {
        return false;
    }
    let ok = write(ctx, 0, fake_l2(proto));
    adjust_head(ctx, ETH_HDR_LEN as i32) && ok
}

/// The key of an advertised IPv4 route lookup.
#[inline(always)]
pub fn adv_v4(dst: [u8; 4]) -> Option<AdvV4> {
    let key = Key::new(32, dst);
    FWD_ADV_V4.get(&key).copied()
}

/// The advertised 4via6 route for a destination.
#[inline(always)]
pub fn adv_via(dst: [u8; 16]) -> Option<AdvVia> {
    let key = Key::new(128, dst);
    FWD_ADV_VIA.get(&key).copied()
}
