//! Subnet forwarding (`tun_forward` and `lan_return` XDP programs): configuration, map layouts,
//! connection-tracking rules and counters.
//!
//! `tun_forward` runs (generic/SKB mode) on the daemon's TUN device and sees the decrypted
//! packets the daemon writes into it: IPv4 packets from tailnet sources (100.64.0.0/10) to an
//! advertised IPv4 prefix, and IPv6 packets to an advertised 4via6 prefix, are (translated,)
//! SNATed, routed with `bpf_fib_lookup` and redirected to the LAN interface. `lan_return` runs on
//! the LAN interface and undoes the translation for replies that match a connection entry, then
//! passes them to the kernel, which routes them into the TUN. Everything else is passed
//! untouched.
//!
//! Maps (names are the ELF symbol names; all multi-byte fields are network byte order):
//!
//! | map | type | key | value |
//! |---|---|---|---|
//! | [`FWD_CONFIG_MAP`] | array, 1 entry | `u32` index 0 | [`FwdConfig`] |
//! | [`FWD_EGRESS_MAP`] | hash | ifindex `[u8; 4]` | [`FwdEgress`] |
//! | [`FWD_ADV_V4_MAP`] | LPM trie | IPv4 prefix `[u8; 4]` | [`AdvV4`] |
//! | [`FWD_ADV_VIA_MAP`] | LPM trie | 4via6 prefix `[u8; 16]` | [`AdvVia`] |
//! | [`FWD_CT_ORIG_MAP`] | LRU hash | [`CtOrigKey`] | [`CtOrigVal`] |
//! | [`FWD_CT_REPLY_MAP`] | LRU hash | [`CtReplyKey`] | [`CtReplyVal`] |
//! | [`TUN_COUNTERS_MAP`] | per-CPU array | [`TunCounter`] index | `u64` |
//! | [`LAN_COUNTERS_MAP`] | per-CPU array | [`LanCounter`] index | `u64` |
//! | [`LAN_XSK_MAP`] | XSK map | receive queue index `u32` | AF_XDP socket |

use crate::counters::counter_enum;

/// Name of the XDP program for the TUN device.
pub const TUN_FORWARD_PROGRAM: &str = "tun_forward";
/// Name of the XDP program for the LAN interface.
pub const LAN_RETURN_PROGRAM: &str = "lan_return";

pub const FWD_CONFIG_MAP: &str = "FWD_CONFIG";
pub const FWD_EGRESS_MAP: &str = "FWD_EGRESS";
pub const FWD_ADV_V4_MAP: &str = "FWD_ADV_V4";
pub const FWD_ADV_VIA_MAP: &str = "FWD_ADV_VIA";
pub const FWD_CT_ORIG_MAP: &str = "FWD_CT_ORIG";
pub const FWD_CT_REPLY_MAP: &str = "FWD_CT_REPLY";
pub const TUN_COUNTERS_MAP: &str = "TUN_FWD_COUNTERS";
pub const LAN_COUNTERS_MAP: &str = "LAN_RET_COUNTERS";
/// AF_XDP sockets `lan_return` hands returned packets to, keyed by receive queue index.
pub const LAN_XSK_MAP: &str = "LAN_XSKS";

/// `max_entries` of [`LAN_XSK_MAP`]: receive queues 0 up to this (exclusive) can have a socket.
pub const LAN_XSK_MAX: u32 = 64;

/// `max_entries` of the egress-interface map.
pub const FWD_EGRESS_MAX: u32 = 64;
/// Default `max_entries` of each advertised-prefix trie (the loader may change it).
pub const FWD_ADV_MAX_DEFAULT: u32 = 65_536;
/// Default `max_entries` of each connection map (the loader may change it).
pub const FWD_CT_MAX_DEFAULT: u32 = 65_536;

/// [`FwdConfig::flags`]: the programs are configured; without it everything is passed
/// uncounted (an all-zero entry means "disabled").
pub const FWD_FLAG_ENABLED: u32 = 1 << 0;
/// [`FwdConfig::flags`]: SNAT plain IPv4 subnet traffic to the egress interface's address
/// (`--snat-subnet-routes`, default on). 4via6 traffic is SNATed regardless.
pub const FWD_FLAG_SNAT: u32 = 1 << 1;

/// The 4via6 range `fd7a:115c:a1e0:b1a::/64`: the first 8 bytes of every 4via6 address.
pub const VIA_PREFIX: [u8; 8] = [0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0x0b, 0x1a];
/// The tailnet's IPv4 range, 100.64.0.0/10: first byte, and mask of the second.
pub const TAILNET_V4_FIRST: u8 = 100;
pub const TAILNET_V4_SECOND_MASK: u8 = 0xc0;
pub const TAILNET_V4_SECOND: u8 = 64;

/// Whether `a` is in 100.64.0.0/10.
#[inline(always)]
pub const fn is_tailnet_v4(a: [u8; 4]) -> bool {
    a[0] == TAILNET_V4_FIRST && a[1] & TAILNET_V4_SECOND_MASK == TAILNET_V4_SECOND
}

/// Whether `a` must never be a 4via6 target (same list as `nat::via6::FORBIDDEN_TARGETS`):
/// 0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, 100.64.0.0/10, 224.0.0.0/4, 255.255.255.255.
#[inline(always)]
pub const fn is_forbidden_via_target(a: [u8; 4]) -> bool {
    a[0] == 0
        || a[0] == 127
        || (a[0] == 169 && a[1] == 254)
        || is_tailnet_v4(a)
        || a[0] & 0xf0 == 0xe0
        || (a[0] == 255 && a[1] == 255 && a[2] == 255 && a[3] == 255)
}

/// Number of idle-timeout classes (see [`CtState::class`]).
pub const CT_TIMEOUT_CLASSES: usize = 6;

/// Configuration of both programs, entry 0 of [`FWD_CONFIG_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwdConfig {
    /// `FWD_FLAG_*` bits.
    pub flags: [u8; 4],
    /// SNAT source ports and ICMP echo IDs are allocated in `port_min..=port_max`.
    pub port_min: [u8; 2],
    pub port_max: [u8; 2],
    /// Seed of the port-choice hash.
    pub seed: [u8; 4],
    /// MTU of the TUN device: `lan_return` answers replies that would not fit into it
    /// (after translation) with an ICMP "fragmentation needed" instead of passing them.
    /// 0 disables the check.
    pub tun_mtu: [u8; 4],
    /// Idle timeouts in seconds per class: TCP transitory (opening/closing), TCP established,
    /// TCP closed (after RST), UDP unreplied, UDP replied, ICMP echo.
    pub timeouts: [[u8; 4]; CT_TIMEOUT_CLASSES],
}

impl FwdConfig {
    pub const fn flags(&self) -> u32 {
        u32::from_be_bytes(self.flags)
    }

    pub const fn has_flag(&self, flag: u32) -> bool {
        self.flags() & flag != 0
    }

    pub const fn port_min(&self) -> u16 {
        u16::from_be_bytes(self.port_min)
    }

    pub const fn port_max(&self) -> u16 {
        u16::from_be_bytes(self.port_max)
    }

    pub const fn seed(&self) -> u32 {
        u32::from_be_bytes(self.seed)
    }

    pub const fn tun_mtu(&self) -> u32 {
        u32::from_be_bytes(self.tun_mtu)
    }

    /// Idle timeout of a timeout class, in seconds (0 for an unknown class).
    #[inline(always)]
    pub const fn timeout_secs(&self, class: usize) -> u32 {
        if class < CT_TIMEOUT_CLASSES {
            u32::from_be_bytes(self.timeouts[class])
        } else {
            0
        }
    }

    /// Whether a connection in `state` (a [`CtState`] value), last seen at `last`, has idled
    /// out at `now` (ns, same clock). A stamp ahead of `now` counts as just seen.
    #[inline(always)]
    pub fn expired(&self, state: u8, last: u64, now: u64) -> bool {
        if now <= last {
            return false;
        }
        let class = CtState::from_u8(state).class();
        now - last >= self.timeout_secs(class) as u64 * 1_000_000_000
    }
}

/// An interface `tun_forward` may redirect to (the FIB's answer must be one of these), value of
/// [`FWD_EGRESS_MAP`] keyed by its ifindex (`[u8; 4]`, big-endian).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwdEgress {
    /// The router's IPv4 address on this interface: the SNAT source.
    pub snat_v4: [u8; 4],
    /// `EGRESS_FLAG_*` bits (big-endian); other bits reserved, zero.
    pub flags: [u8; 4],
}

/// [`FwdEgress::flags`]: AF_XDP sockets in [`LAN_XSK_MAP`] belong to this interface, so
/// `lan_return` running on it redirects returned packets to the socket of their receive queue
/// (when one is registered) instead of passing them to the kernel.
pub const EGRESS_FLAG_XSK: u32 = 1 << 0;

impl FwdEgress {
    /// Whether `flag` (an `EGRESS_FLAG_*` bit) is set.
    pub const fn has_flag(&self, flag: u32) -> bool {
        u32::from_be_bytes(self.flags) & flag != 0
    }
}

/// Value of [`FWD_ADV_V4_MAP`] (an advertised IPv4 subnet route).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdvV4 {
    /// Reserved, zero.
    pub flags: [u8; 4],
    /// Routing table for `bpf_fib_lookup` (0: the normal lookup; otherwise this table only,
    /// `BPF_FIB_LOOKUP_TBID`, kernel 6.8+).
    pub table: [u8; 4],
}

/// Value of [`FWD_ADV_VIA_MAP`] (an advertised 4via6 route, `/96` or longer).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdvVia {
    /// Site ID (also in bytes 8..12 of the prefix; kept for status output).
    pub site: [u8; 4],
    /// Routing table of the site's LAN for `bpf_fib_lookup` (0: the normal lookup), so that
    /// sites with overlapping IPv4 ranges behind one router can use separate tables.
    pub table: [u8; 4],
}

/// `CtOrigKey::family` values.
pub const CT_FAMILY_V4: u8 = 4;
pub const CT_FAMILY_V6: u8 = 6;

/// IP protocol numbers used in keys.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// A connection as the tailnet side sends it (key of [`FWD_CT_ORIG_MAP`]).
///
/// ICMP echo requests have `sport` = echo ID and `dport` = 0 (as in `nat::translate`).
/// `proto` is the *translated* protocol (ICMPv6 echo is recorded as [`PROTO_ICMP`]); IPv4
/// addresses occupy the first 4 bytes of `src`/`dst`, the rest is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtOrigKey {
    pub proto: u8,
    /// [`CT_FAMILY_V4`] or [`CT_FAMILY_V6`].
    pub family: u8,
    pub pad: [u8; 2],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// A connection's replies as they arrive on the LAN side (key of [`FWD_CT_REPLY_MAP`]):
/// from the LAN host `src`:`sport` to the SNAT address `dst`:`dport`, on interface `ifindex`.
/// Echo replies have `sport` = 0 and `dport` = the allocated echo ID.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtReplyKey {
    pub ifindex: [u8; 4],
    pub proto: u8,
    pub pad: [u8; 3],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

/// [`CtOrigVal::flags`]: a 4via6 connection (IPv6 on the tailnet side).
pub const CT_FLAG_VIA6: u8 = 1 << 0;

/// Value of [`FWD_CT_ORIG_MAP`]: the connection's reply tuple (which holds the SNAT address and
/// port), state and timestamps (`bpf_ktime_get_coarse_ns`, never ahead of CLOCK_MONOTONIC).
///
/// The connection was last seen at the later of this entry's `last_seen` and its reply
/// entry's ([`CtReplyVal::last_seen`]): see [`ct_last_seen`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtOrigVal {
    pub reply: CtReplyKey,
    /// `CT_FLAG_*`.
    pub flags: u8,
    /// A [`CtState`] value.
    pub state: u8,
    pub pad: [u8; 2],
    /// When the last packet was seen, ns: every packet toward the LAN, and replies that went
    /// through `lan_return`'s full check (state changes, or a reply entry that looked idle).
    pub last_seen: [u8; 8],
    /// When `tun_forward` last checked that the reply entry still exists (LRU eviction can
    /// remove one side only), ns.
    pub checked: [u8; 8],
}

impl CtOrigVal {
    /// [`CtOrigVal::last_seen`] as a number.
    pub const fn last_seen(&self) -> u64 {
        u64::from_be_bytes(self.last_seen)
    }
}

/// Value of [`FWD_CT_REPLY_MAP`]: the original tuple, and what `lan_return` needs to return a
/// reply with this one lookup: the connection's flags, a copy of its state (the programs
/// write both entries whenever the state changes) and when the last reply was seen.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtReplyVal {
    pub orig: CtOrigKey,
    /// `CT_FLAG_*`, as in the [`CtOrigVal`].
    pub flags: u8,
    /// A [`CtState`] value, as in the [`CtOrigVal`].
    pub state: u8,
    pub pad: [u8; 2],
    /// When the last reply was seen, ns (see [`CtOrigVal`] for the clock).
    pub last_seen: [u8; 8],
}

impl CtReplyVal {
    /// [`CtReplyVal::last_seen`] as a number.
    pub const fn last_seen(&self) -> u64 {
        u64::from_be_bytes(self.last_seen)
    }
}

/// When a connection was last seen: the later of its two entries' stamps.
pub const fn ct_last_seen(orig: &CtOrigVal, reply: &CtReplyVal) -> u64 {
    let (o, r) = (orig.last_seen(), reply.last_seen());
    if o > r {
        o
    } else {
        r
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY (all impls below): each type is `#[repr(C)]`, `Copy`, made only of `u8` and `u8`
    // arrays (alignment 1, hence no padding) or of such structs, holds no pointers, and every
    // bit pattern is a valid value.
    unsafe impl aya::Pod for FwdConfig {}
    // SAFETY: see above.
    unsafe impl aya::Pod for FwdEgress {}
    // SAFETY: see above.
    unsafe impl aya::Pod for AdvV4 {}
    // SAFETY: see above.
    unsafe impl aya::Pod for AdvVia {}
    // SAFETY: see above.
    unsafe impl aya::Pod for CtOrigKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for CtReplyKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for CtOrigVal {}
    // SAFETY: see above.
    unsafe impl aya::Pod for CtReplyVal {}
}

/// Connection state (same lifecycle as `nat::conntrack::ConnState`); decides the idle timeout.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CtState {
    TcpOpening = 0,
    TcpEstablished = 1,
    TcpClosing = 2,
    TcpClosed = 3,
    UdpUnreplied = 4,
    UdpReplied = 5,
    Icmp = 6,
}

/// TCP flag bits (byte 13 of the TCP header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

impl CtState {
    pub const fn from_u8(v: u8) -> CtState {
        match v {
            0 => CtState::TcpOpening,
            1 => CtState::TcpEstablished,
            2 => CtState::TcpClosing,
            3 => CtState::TcpClosed,
            4 => CtState::UdpUnreplied,
            5 => CtState::UdpReplied,
            _ => CtState::Icmp,
        }
    }

    /// Initial state for a translated protocol number.
    pub const fn initial(proto: u8) -> CtState {
        match proto {
            PROTO_TCP => CtState::TcpOpening,
            PROTO_UDP => CtState::UdpUnreplied,
            _ => CtState::Icmp,
        }
    }

    /// Timeout class: index into [`FwdConfig::timeouts`].
    pub const fn class(self) -> usize {
        match self {
            CtState::TcpOpening | CtState::TcpClosing => 0,
            CtState::TcpEstablished => 1,
            CtState::TcpClosed => 2,
            CtState::UdpUnreplied => 3,
            CtState::UdpReplied => 4,
            CtState::Icmp => 5,
        }
    }

    /// The state after a packet in direction `reply` with TCP `flags` (0 for UDP/ICMP).
    pub const fn next(self, reply: bool, flags: u8) -> CtState {
        use CtState::*;
        match self {
            TcpOpening | TcpEstablished | TcpClosing | TcpClosed => {
                if flags & TCP_RST != 0 {
                    TcpClosed
                } else if flags & TCP_SYN != 0 && flags & TCP_ACK == 0 && !reply {
                    // A new SYN on the same tuple starts over (port reuse after close).
                    match self {
                        TcpClosing | TcpClosed => TcpOpening,
                        other => other,
                    }
                } else if flags & TCP_FIN != 0 {
                    match self {
                        TcpClosed => TcpClosed,
                        _ => TcpClosing,
                    }
                } else if reply && matches!(self, TcpOpening) {
                    TcpEstablished
                } else {
                    self
                }
            }
            UdpUnreplied if reply => UdpReplied,
            other => other,
        }
    }
}

/// Default idle timeouts in seconds, per class (as `nat::conntrack::Timeouts::default`).
pub const CT_DEFAULT_TIMEOUTS: [u32; CT_TIMEOUT_CLASSES] =
    [240, 2 * 3600 + 4 * 60, 10, 30, 180, 30];

counter_enum! {
    /// Index into the `TUN_FWD_COUNTERS` per-CPU array: what `tun_forward` did with a packet.
    pub enum TunCounter {
        /// Plain IPv4 forwarded (SNATed or not) and redirected to the LAN interface.
        FwdV4 = 0 => "forwarded_v4",
        /// 4via6 translated to IPv4, SNATed and redirected to the LAN interface.
        FwdVia6 = 1 => "forwarded_via6",
        /// Connection entries created (counted in addition to the packet's verdict).
        SnatNewConn = 2 => "snat_new_conn",
        /// No neighbour entry for the next hop: NATed/translated (when the flow needs it, so that
        /// the flow keeps one NAT mapping) and passed for the kernel to route and resolve.
        PassNoNeigh = 3 => "passed_no_neigh",
        /// A partial checksum (a GSO super-packet the daemon wrote): NATed and passed for the
        /// kernel to segment (plain IPv4 only; 4via6 ones count as `PassUnsupported`).
        PassGso = 4 => "passed_gso",
        /// Too big for the egress MTU without DF: NATed/translated and passed for the kernel to
        /// fragment.
        PassFragment = 5 => "passed_fragment",
        /// IPv4 with DF, too big for the egress MTU: passed untouched, the kernel answers with ICMP
        /// "fragmentation needed".
        PassTooBig = 6 => "passed_too_big",
        /// 4via6 too big for the egress MTU: ICMPv6 "packet too big" sent back into the tunnel.
        IcmpTooBig = 7 => "icmp_too_big",
        /// Not from the tailnet to an advertised prefix (or an echo reply): passed untouched.
        PassNoMatch = 8 => "passed_no_match",
        /// Fragments, IPv6 extension headers, other protocols, ICMP errors, malformed or GSO
        /// 4via6: passed untouched.
        PassUnsupported = 9 => "passed_unsupported",
        /// TTL / hop limit would expire: passed untouched (the kernel sends "time exceeded").
        PassTtl = 10 => "passed_ttl",
        /// The FIB has no usable route (unreachable, blackhole, local, forwarding disabled, or an
        /// egress interface that is not a configured LAN interface): passed untouched.
        PassFib = 11 => "passed_fib",
        /// No free SNAT port / echo ID for a new connection: passed untouched.
        PassNoPort = 12 => "passed_no_port",
        /// A helper failed after the packet was modified: dropped.
        DropError = 13 => "dropped_error",
    }
}

counter_enum! {
    /// Index into the `LAN_RET_COUNTERS` per-CPU array: what `lan_return` did with a packet.
    pub enum LanCounter {
        /// Reply of a plain IPv4 connection, de-SNATed and passed (the kernel routes it into the
        /// TUN).
        ReturnedV4 = 0 => "returned_v4",
        /// Reply of a 4via6 connection, translated back to IPv6 and passed.
        ReturnedVia6 = 1 => "returned_via6",
        /// No connection entry: passed untouched.
        PassNoMatch = 2 => "passed_no_match",
        /// The entry had idled out or lost its other half: passed untouched.
        PassExpired = 3 => "passed_expired",
        /// Fragments, VLAN tags, IPv4 options (4via6), ICMP errors, other protocols, malformed:
        /// passed untouched.
        PassUnsupported = 4 => "passed_unsupported",
        /// Reply too big for the tunnel after translation (DF set, or 4via6): ICMP "fragmentation
        /// needed" sent back to the LAN host.
        IcmpTooBig = 5 => "icmp_too_big",
        /// 4via6 reply too big for the tunnel and without DF (would need IPv6 fragmentation):
        /// dropped.
        DropTooBig = 6 => "dropped_too_big",
        /// A helper failed after the packet was modified: dropped.
        DropError = 7 => "dropped_error",
        /// ICMP error (unreachable, time exceeded, fragmentation needed, parameter problem) about a
        /// packet of a tracked connection: translated for the client (IPv4 or ICMPv6) and passed.
        ReturnedIcmpError = 8 => "returned_icmp_error",
        /// A returned packet (any of the `Returned*` counters, which count it as well) redirected
        /// to the AF_XDP socket of its receive queue instead of being passed to the kernel.
        RedirectedXsk = 9 => "redirected_xsk",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<FwdConfig>(), 16 + 4 * CT_TIMEOUT_CLASSES);
        assert_eq!(size_of::<FwdEgress>(), 8);
        assert_eq!(size_of::<AdvV4>(), 8);
        assert_eq!(size_of::<AdvVia>(), 8);
        assert_eq!(size_of::<CtOrigKey>(), 40);
        assert_eq!(size_of::<CtReplyKey>(), 20);
        assert_eq!(size_of::<CtOrigVal>(), 20 + 4 + 16);
        assert_eq!(size_of::<CtReplyVal>(), 40 + 4 + 8);
        assert_eq!(core::mem::align_of::<CtOrigVal>(), 1);
    }

    #[test]
    fn address_classes() {
        assert!(is_tailnet_v4([100, 64, 0, 1]));
        assert!(is_tailnet_v4([100, 127, 255, 255]));
        assert!(!is_tailnet_v4([100, 128, 0, 1]));
        assert!(!is_tailnet_v4([100, 63, 0, 1]));
        for a in [
            [0, 1, 2, 3],
            [127, 0, 0, 1],
            [169, 254, 1, 1],
            [100, 100, 100, 100],
            [224, 0, 0, 1],
            [239, 1, 1, 1],
            [255, 255, 255, 255],
        ] {
            assert!(is_forbidden_via_target(a), "{a:?}");
        }
        for a in [
            [10, 1, 1, 5],
            [192, 168, 1, 1],
            [100, 128, 0, 1],
            [8, 8, 8, 8],
        ] {
            assert!(!is_forbidden_via_target(a), "{a:?}");
        }
    }

    #[test]
    fn tcp_lifecycle() {
        use CtState::*;
        let s = CtState::initial(PROTO_TCP).next(false, TCP_SYN);
        assert_eq!(s, TcpOpening);
        let s = s.next(true, TCP_SYN | TCP_ACK);
        assert_eq!(s, TcpEstablished);
        assert_eq!(s.next(false, TCP_ACK), TcpEstablished);
        let s = s.next(false, TCP_FIN | TCP_ACK);
        assert_eq!(s, TcpClosing);
        assert_eq!(s.next(false, TCP_SYN), TcpOpening);
        assert_eq!(s.next(true, TCP_RST), TcpClosed);
        assert_eq!(TcpClosed.next(false, TCP_FIN), TcpClosed);
        assert_eq!(CtState::initial(PROTO_UDP).next(true, 0), UdpReplied);
        assert_eq!(CtState::initial(PROTO_UDP).next(false, 0), UdpUnreplied);
        assert_eq!(CtState::initial(PROTO_ICMP), Icmp);
        for v in 0..7u8 {
            assert_eq!(CtState::from_u8(v) as u8, v);
        }
        assert_eq!(TcpEstablished.class(), 1);
        assert_eq!(Icmp.class(), 5);
    }

    #[test]
    fn config_accessors() {
        let mut c = FwdConfig {
            flags: (FWD_FLAG_ENABLED | FWD_FLAG_SNAT).to_be_bytes(),
            port_min: 61000u16.to_be_bytes(),
            port_max: 65535u16.to_be_bytes(),
            ..FwdConfig::default()
        };
        c.timeouts[5] = 30u32.to_be_bytes();
        assert!(c.has_flag(FWD_FLAG_SNAT));
        assert_eq!(c.port_min(), 61000);
        assert_eq!(c.port_max(), 65535);
        assert_eq!(c.timeout_secs(5), 30);
        assert_eq!(c.timeout_secs(6), 0);
    }
}
