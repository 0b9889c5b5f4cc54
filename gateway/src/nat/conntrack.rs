//! The SNAT connection table.
//!
//! Each connection is a flow the tailnet side started, keyed two ways: by its *original*
//! tuple (as the tailnet peer sent it, e.g. `fd7a:…::5:40000 → 4via6(10.1.1.5):53`) and by
//! its *reply* tuple (as replies arrive from the LAN, e.g. `10.1.1.5:53 → 192.168.1.1:61000`).
//! The reply tuple holds the allocated SNAT address and port (or ICMP echo ID, see
//! [`translate`](super::translate) for the port conventions).
//!
//! Ports are allocated per reply tuple, so the same port can serve different destinations:
//! the original source port is kept when it is in range and free, otherwise a port is picked
//! from a seeded hash of the original tuple, probing upward. Connections idle out per protocol
//! and state (time is passed in); the table is bounded and evicts the least recently used
//! connection when full. Everything is O(1) per packet: one LRU list per timeout class keeps
//! expiry and eviction at the list tails.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use super::translate::{tcp_flags, FlowTuple, L4Proto};

/// Idle timeouts per protocol and state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP after a reply was seen, until FIN/RST (RFC 5382: at least 2 h 4 min).
    pub tcp_established: Duration,
    /// TCP opening (no reply yet) or closing after a FIN (RFC 5382: at least 4 min).
    pub tcp_transitory: Duration,
    /// TCP after an RST.
    pub tcp_closed: Duration,
    /// UDP before any reply.
    pub udp_unreplied: Duration,
    /// UDP once a reply was seen (RFC 4787: at least 2 min).
    pub udp: Duration,
    /// ICMP echo.
    pub icmp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_established: Duration::from_secs(2 * 3600 + 4 * 60),
            tcp_transitory: Duration::from_secs(240),
            tcp_closed: Duration::from_secs(10),
            udp_unreplied: Duration::from_secs(30),
            udp: Duration::from_secs(180),
            icmp: Duration::from_secs(30),
        }
    }
}

/// Connection table settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnConfig {
    /// Most connections kept; the least recently used one is evicted beyond that.
    pub max_entries: usize,
    /// SNAT ports and ICMP echo IDs are taken from this range. The default, 61000–65535,
    /// stays clear of Linux's ephemeral ports (32768–60999) so replies to the router's own
    /// sockets are never mistaken for NATed traffic.
    pub port_range: RangeInclusive<u16>,
    /// Idle timeouts.
    pub timeouts: Timeouts,
    /// Seed for the port choice hash (make it random in production).
    pub seed: u64,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            max_entries: 65_536,
            port_range: 61_000..=65_535,
            timeouts: Timeouts::default(),
            seed: 0,
        }
    }
}

/// Lifecycle state of a connection; decides its idle timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnState {
    /// TCP, no reply seen yet.
    TcpOpening,
    /// TCP, reply seen.
    TcpEstablished,
    /// TCP, FIN seen.
    TcpClosing,
    /// TCP, RST seen.
    TcpClosed,
    /// UDP, no reply seen yet.
    UdpUnreplied,
    /// UDP, reply seen.
    UdpReplied,
    /// ICMP echo.
    Icmp,
}

/// Timeout classes: one LRU list each.
const CLASSES: usize = 6;

impl ConnState {
    fn class(self) -> usize {
        match self {
            ConnState::TcpOpening | ConnState::TcpClosing => 0,
            ConnState::TcpEstablished => 1,
            ConnState::TcpClosed => 2,
            ConnState::UdpUnreplied => 3,
            ConnState::UdpReplied => 4,
            ConnState::Icmp => 5,
        }
    }

    fn initial(proto: L4Proto) -> Self {
        match proto {
            L4Proto::Tcp => ConnState::TcpOpening,
            L4Proto::Udp => ConnState::UdpUnreplied,
            L4Proto::Icmp => ConnState::Icmp,
        }
    }

    /// The state after a packet in direction `reply` with TCP `flags`.
    fn next(self, reply: bool, flags: u8) -> Self {
        use ConnState::*;
        match self {
            TcpOpening | TcpEstablished | TcpClosing | TcpClosed => {
                if flags & tcp_flags::RST != 0 {
                    TcpClosed
                } else if flags & tcp_flags::SYN != 0 && flags & tcp_flags::ACK == 0 && !reply {
                    // A new SYN on the same tuple starts over (port reuse after close).
                    if matches!(self, TcpClosing | TcpClosed) {
                        TcpOpening
                    } else {
                        self
                    }
                } else if flags & tcp_flags::FIN != 0 {
                    if self == TcpClosed {
                        TcpClosed
                    } else {
                        TcpClosing
                    }
                } else if reply && self == TcpOpening {
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

fn timeout(t: &Timeouts, class: usize) -> Duration {
    match class {
        0 => t.tcp_transitory,
        1 => t.tcp_established,
        2 => t.tcp_closed,
        3 => t.udp_unreplied,
        4 => t.udp,
        _ => t.icmp,
    }
}

/// One tracked connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conn {
    /// The flow as the tailnet side sends it.
    pub orig: FlowTuple,
    /// Replies as they arrive from the LAN side: `dst`/`dport` are the SNAT address and port.
    pub reply: FlowTuple,
    /// Lifecycle state.
    pub state: ConnState,
    /// When the last packet (either direction) was seen.
    pub last_seen: Instant,
}

impl Conn {
    /// The original-direction packet after translation (reverse of [`Conn::reply`]).
    pub fn translated(&self) -> FlowTuple {
        self.reply.reversed()
    }
}

/// Why no connection could be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnError {
    /// Every port in the range is taken for this destination.
    #[error("no free SNAT port for this destination")]
    PortsExhausted,
    /// `max_entries` is zero.
    #[error("connection table has no room (max_entries = 0)")]
    NoCapacity,
}

/// Event counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Connections created.
    pub created: u64,
    /// Connections removed after idling out.
    pub expired: u64,
    /// Connections evicted (least recently used) because the table was full.
    pub evicted: u64,
    /// Connections refused because no port was free.
    pub port_exhausted: u64,
    /// Connections replaced because the SNAT address or destination changed.
    pub replaced: u64,
}

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Node {
    conn: Option<Conn>,
    prev: u32,
    next: u32,
    class: usize,
}

#[derive(Debug, Clone, Copy)]
struct List {
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
}

/// The connection table.
#[derive(Debug, Clone)]
pub struct ConnTrack {
    cfg: ConnConfig,
    nodes: Vec<Node>,
    free: Vec<u32>,
    lists: [List; CLASSES],
    by_orig: HashMap<FlowTuple, u32>,
    by_reply: HashMap<FlowTuple, u32>,
    stats: ConnStats,
}

impl ConnTrack {
    /// An empty table.
    pub fn new(cfg: ConnConfig) -> Self {
        ConnTrack {
            cfg,
            nodes: Vec::new(),
            free: Vec::new(),
            lists: [List {
                head: NIL,
                tail: NIL,
            }; CLASSES],
            by_orig: HashMap::new(),
            by_reply: HashMap::new(),
            stats: ConnStats::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &ConnConfig {
        &self.cfg
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.by_orig.len()
    }

    /// True when there are no connections.
    pub fn is_empty(&self) -> bool {
        self.by_orig.is_empty()
    }

    /// Event counters.
    pub fn stats(&self) -> ConnStats {
        self.stats
    }

    /// All connections, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Conn> {
        self.nodes.iter().filter_map(|n| n.conn.as_ref())
    }

    fn conn(&self, idx: u32) -> Option<&Conn> {
        self.nodes.get(idx as usize).and_then(|n| n.conn.as_ref())
    }

    fn is_expired(&self, idx: u32, now: Instant) -> bool {
        let Some(node) = self.nodes.get(idx as usize) else {
            return true;
        };
        match &node.conn {
            Some(c) => {
                now.saturating_duration_since(c.last_seen)
                    >= timeout(&self.cfg.timeouts, node.class)
            }
            None => true,
        }
    }

    fn unlink(&mut self, idx: u32) {
        let (prev, next, class) = {
            let n = &self.nodes[idx as usize];
            (n.prev, n.next, n.class)
        };
        if prev == NIL {
            self.lists[class].head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.lists[class].tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
    }

    fn push_front(&mut self, idx: u32, class: usize) {
        let head = self.lists[class].head;
        {
            let n = &mut self.nodes[idx as usize];
            n.prev = NIL;
            n.next = head;
            n.class = class;
        }
        if head == NIL {
            self.lists[class].tail = idx;
        } else {
            self.nodes[head as usize].prev = idx;
        }
        self.lists[class].head = idx;
    }

    fn remove_idx(&mut self, idx: u32) -> Option<Conn> {
        let conn = self.nodes.get_mut(idx as usize)?.conn.take()?;
        self.unlink(idx);
        self.by_orig.remove(&conn.orig);
        self.by_reply.remove(&conn.reply);
        self.free.push(idx);
        Some(conn)
    }

    /// Marks a packet on connection `idx`: state, timestamp, LRU position.
    fn touch(&mut self, idx: u32, reply: bool, flags: u8, now: Instant) {
        let Some(conn) = self.nodes[idx as usize].conn.as_mut() else {
            return;
        };
        conn.state = conn.state.next(reply, flags);
        conn.last_seen = now;
        let class = conn.state.class();
        self.unlink(idx);
        self.push_front(idx, class);
    }

    /// Removes idle connections; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut n = 0;
        for class in 0..CLASSES {
            loop {
                let tail = self.lists[class].tail;
                if tail == NIL || !self.is_expired(tail, now) {
                    break;
                }
                self.remove_idx(tail);
                n += 1;
            }
        }
        self.stats.expired += n as u64;
        n
    }

    /// Evicts the least recently used connection.
    fn evict_lru(&mut self) {
        let oldest = self
            .lists
            .iter()
            .filter(|l| l.tail != NIL)
            .filter_map(|l| self.conn(l.tail).map(|c| (c.last_seen, l.tail)))
            .min();
        if let Some((_, idx)) = oldest {
            self.remove_idx(idx);
            self.stats.evicted += 1;
        }
    }

    /// The connection a packet from the tailnet side with tuple `orig` belongs to, if any
    /// (not refreshed: for ICMP errors).
    pub fn find_orig(&self, orig: &FlowTuple, now: Instant) -> Option<&Conn> {
        let idx = *self.by_orig.get(orig)?;
        (!self.is_expired(idx, now))
            .then(|| self.conn(idx))
            .flatten()
    }

    /// The connection a packet from the LAN side with tuple `reply` belongs to, if any
    /// (not refreshed: for ICMP errors).
    pub fn find_reply(&self, reply: &FlowTuple, now: Instant) -> Option<&Conn> {
        let idx = *self.by_reply.get(reply)?;
        (!self.is_expired(idx, now))
            .then(|| self.conn(idx))
            .flatten()
    }

    /// A packet from the LAN side: refreshes and returns the connection its tuple `reply`
    /// matches, or `None` (not NATed traffic).
    pub fn inbound(&mut self, reply: &FlowTuple, tcp_flags: u8, now: Instant) -> Option<&Conn> {
        let idx = *self.by_reply.get(reply)?;
        if self.is_expired(idx, now) {
            self.remove_idx(idx);
            self.stats.expired += 1;
            return None;
        }
        self.touch(idx, true, tcp_flags, now);
        self.conn(idx)
    }

    /// A packet from the tailnet side with tuple `orig`, to be sent from `snat_src` to
    /// `xlat_dst` (its destination after translation: `orig.dst`, or for 4via6 the embedded
    /// IPv4 address): refreshes its connection or creates one with a fresh SNAT port.
    pub fn outbound(
        &mut self,
        orig: &FlowTuple,
        snat_src: IpAddr,
        xlat_dst: IpAddr,
        tcp_flags: u8,
        now: Instant,
    ) -> Result<&Conn, ConnError> {
        if let Some(&idx) = self.by_orig.get(orig) {
            let fits = self
                .conn(idx)
                .is_some_and(|c| c.reply.dst == snat_src && c.reply.src == xlat_dst);
            if !self.is_expired(idx, now) && fits {
                self.touch(idx, false, tcp_flags, now);
                return self.conn(idx).ok_or(ConnError::NoCapacity);
            }
            if fits {
                self.stats.expired += 1;
            } else {
                self.stats.replaced += 1;
            }
            self.remove_idx(idx);
        }
        if self.cfg.max_entries == 0 {
            return Err(ConnError::NoCapacity);
        }
        if self.len() >= self.cfg.max_entries {
            self.expire(now);
            while self.len() >= self.cfg.max_entries {
                self.evict_lru();
            }
        }
        let reply = self.allocate(orig, snat_src, xlat_dst, now)?;
        let state = ConnState::initial(orig.proto).next(false, tcp_flags);
        let conn = Conn {
            orig: *orig,
            reply,
            state,
            last_seen: now,
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize].conn = Some(conn);
                i
            }
            None => {
                self.nodes.push(Node {
                    conn: Some(conn),
                    prev: NIL,
                    next: NIL,
                    class: 0,
                });
                (self.nodes.len() - 1) as u32
            }
        };
        self.push_front(idx, state.class());
        self.by_orig.insert(*orig, idx);
        self.by_reply.insert(reply, idx);
        self.stats.created += 1;
        self.conn(idx).ok_or(ConnError::NoCapacity)
    }

    /// Picks the reply tuple (SNAT port) for a new connection.
    fn allocate(
        &mut self,
        orig: &FlowTuple,
        snat_src: IpAddr,
        xlat_dst: IpAddr,
        now: Instant,
    ) -> Result<FlowTuple, ConnError> {
        let (lo, hi) = (*self.cfg.port_range.start(), *self.cfg.port_range.end());
        if lo > hi {
            self.stats.port_exhausted += 1;
            return Err(ConnError::PortsExhausted);
        }
        let span = u32::from(hi) - u32::from(lo) + 1;
        // The source port, or an echo request's ID.
        let wanted = orig.sport;
        let mut h = DefaultHasher::new();
        self.cfg.seed.hash(&mut h);
        orig.hash(&mut h);
        let start = (h.finish() % u64::from(span)) as u32;
        let preserved = (lo..=hi).contains(&wanted).then_some(wanted);
        let probes = (0..span).map(|k| (u32::from(lo) + (start + k) % span) as u16);
        for port in preserved.into_iter().chain(probes) {
            let reply = FlowTuple {
                proto: orig.proto,
                src: xlat_dst,
                sport: orig.dport,
                dst: snat_src,
                dport: port,
            };
            match self.by_reply.get(&reply) {
                None => return Ok(reply),
                Some(&idx) if self.is_expired(idx, now) => {
                    self.remove_idx(idx);
                    self.stats.expired += 1;
                    return Ok(reply);
                }
                Some(_) => {}
            }
        }
        self.stats.port_exhausted += 1;
        Err(ConnError::PortsExhausted)
    }

    /// Removes the connection with original tuple `orig`.
    pub fn remove(&mut self, orig: &FlowTuple) -> Option<Conn> {
        let idx = *self.by_orig.get(orig)?;
        self.remove_idx(idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn tuple(proto: L4Proto, src: &str, sport: u16, dst: &str, dport: u16) -> FlowTuple {
        FlowTuple {
            proto,
            src: ip(src),
            sport,
            dst: ip(dst),
            dport,
        }
    }

    const LAN: &str = "192.168.1.1";

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn udp_flow_and_reply() {
        let mut ct = ConnTrack::new(ConnConfig::default());
        let t0 = Instant::now();
        let orig = tuple(L4Proto::Udp, "100.64.0.5", 40000, "10.1.1.5", 53);
        let c = ct
            .outbound(&orig, ip(LAN), orig.dst, 0, t0)
            .unwrap()
            .clone();
        assert_eq!(c.orig, orig);
        assert_eq!(c.reply.src, orig.dst);
        assert_eq!(c.reply.sport, 53);
        assert_eq!(c.reply.dst, ip(LAN));
        assert!(ConnConfig::default().port_range.contains(&c.reply.dport));
        assert_eq!(
            c.translated(),
            tuple(L4Proto::Udp, LAN, c.reply.dport, "10.1.1.5", 53)
        );
        assert_eq!(c.state, ConnState::UdpUnreplied);
        // Same flow again: same entry.
        let again = ct
            .outbound(&orig, ip(LAN), orig.dst, 0, t0 + secs(1))
            .unwrap();
        assert_eq!(again.reply, c.reply);
        assert_eq!(ct.len(), 1);
        // The reply finds it and marks it replied.
        let r = ct.inbound(&c.reply, 0, t0 + secs(2)).unwrap();
        assert_eq!(r.orig, orig);
        assert_eq!(r.state, ConnState::UdpReplied);
        // Other LAN traffic does not match.
        assert!(ct.inbound(&c.reply.reversed(), 0, t0).is_none());
        assert_eq!(ct.stats().created, 1);
    }

    #[test]
    fn via6_flow_translates_family() {
        let mut ct = ConnTrack::new(ConnConfig::default());
        let t0 = Instant::now();
        let orig = tuple(
            L4Proto::Icmp,
            "fd7a:115c:a1e0::5",
            77,
            "fd7a:115c:a1e0:b1a:0:7:a01:105",
            0,
        );
        let c = ct
            .outbound(&orig, ip(LAN), ip("10.1.1.5"), 0, t0)
            .unwrap()
            .clone();
        assert_eq!(c.reply.src, ip("10.1.1.5"));
        assert_eq!(c.reply.sport, 0);
        assert_eq!(c.reply.dst, ip(LAN));
        assert_eq!(c.state, ConnState::Icmp);
        // Echo reply tuple: sport 0, dport = ID.
        let echo_reply = tuple(L4Proto::Icmp, "10.1.1.5", 0, LAN, c.reply.dport);
        assert_eq!(ct.inbound(&echo_reply, 0, t0).unwrap().orig, orig);
        // Lookups for ICMP errors.
        assert!(ct.find_orig(&orig, t0).is_some());
        assert!(ct.find_reply(&c.reply, t0).is_some());
        assert!(ct.find_reply(&c.reply, t0 + secs(31)).is_none());
    }

    #[test]
    fn ports_are_preserved_and_collisions_avoided() {
        let mut ct = ConnTrack::new(ConnConfig::default());
        let t0 = Instant::now();
        let a = tuple(L4Proto::Tcp, "100.64.0.5", 62000, "10.1.1.5", 22);
        let b = tuple(L4Proto::Tcp, "100.64.0.6", 62000, "10.1.1.5", 22);
        let c = tuple(L4Proto::Tcp, "100.64.0.6", 62000, "10.1.1.6", 22);
        let d = tuple(L4Proto::Tcp, "100.64.0.7", 1234, "10.1.1.5", 22);
        let pa = ct
            .outbound(&a, ip(LAN), a.dst, tcp_flags::SYN, t0)
            .unwrap()
            .reply
            .dport;
        let pb = ct
            .outbound(&b, ip(LAN), b.dst, tcp_flags::SYN, t0)
            .unwrap()
            .reply
            .dport;
        let pc = ct
            .outbound(&c, ip(LAN), c.dst, tcp_flags::SYN, t0)
            .unwrap()
            .reply
            .dport;
        let pd = ct
            .outbound(&d, ip(LAN), d.dst, tcp_flags::SYN, t0)
            .unwrap()
            .reply
            .dport;
        assert_eq!(pa, 62000, "in range and free: kept");
        assert_ne!(pb, pa, "same destination: must differ");
        assert_eq!(pc, 62000, "other destination: may reuse");
        assert!((61000..=65535).contains(&pd), "out of range: remapped");
        let replies: std::collections::HashSet<_> = ct.iter().map(|c| c.reply).collect();
        assert_eq!(replies.len(), 4);
    }

    #[test]
    fn exhaustion_and_reclaiming_expired_ports() {
        let cfg = ConnConfig {
            port_range: 100..=103,
            ..ConnConfig::default()
        };
        let mut ct = ConnTrack::new(cfg);
        let t0 = Instant::now();
        for i in 0..4 {
            let t = tuple(L4Proto::Udp, "100.64.0.5", 5000 + i, "10.1.1.5", 53);
            ct.outbound(&t, ip(LAN), t.dst, 0, t0).unwrap();
        }
        let fifth = tuple(L4Proto::Udp, "100.64.0.5", 5004, "10.1.1.5", 53);
        assert_eq!(
            ct.outbound(&fifth, ip(LAN), fifth.dst, 0, t0).unwrap_err(),
            ConnError::PortsExhausted
        );
        assert_eq!(ct.stats().port_exhausted, 1);
        // Another destination still has all four ports.
        let other = tuple(L4Proto::Udp, "100.64.0.5", 5004, "10.1.1.6", 53);
        ct.outbound(&other, ip(LAN), other.dst, 0, t0).unwrap();
        // Once the first four idle out (30 s unreplied), their ports are reused.
        let later = t0 + secs(31);
        let c = ct.outbound(&fifth, ip(LAN), fifth.dst, 0, later).unwrap();
        assert!((100..=103).contains(&c.reply.dport));
        assert!(ct.stats().expired >= 1);
        // An empty range never allocates.
        #[allow(clippy::reversed_empty_ranges)]
        let empty_range = 10..=9;
        let mut empty = ConnTrack::new(ConnConfig {
            port_range: empty_range,
            ..ConnConfig::default()
        });
        assert_eq!(
            empty
                .outbound(&fifth, ip(LAN), fifth.dst, 0, t0)
                .unwrap_err(),
            ConnError::PortsExhausted
        );
        let mut none = ConnTrack::new(ConnConfig {
            max_entries: 0,
            ..ConnConfig::default()
        });
        assert_eq!(
            none.outbound(&fifth, ip(LAN), fifth.dst, 0, t0)
                .unwrap_err(),
            ConnError::NoCapacity
        );
    }

    #[test]
    fn timeouts_per_protocol_and_state() {
        let mut ct = ConnTrack::new(ConnConfig::default());
        let t0 = Instant::now();
        let udp1 = tuple(L4Proto::Udp, "100.64.0.5", 1, "10.1.1.5", 53);
        let udp2 = tuple(L4Proto::Udp, "100.64.0.5", 2, "10.1.1.5", 53);
        let icmp = tuple(L4Proto::Icmp, "100.64.0.5", 3, "10.1.1.5", 0);
        let tcp_open = tuple(L4Proto::Tcp, "100.64.0.5", 4, "10.1.1.5", 80);
        let tcp_est = tuple(L4Proto::Tcp, "100.64.0.5", 5, "10.1.1.5", 80);
        let tcp_rst = tuple(L4Proto::Tcp, "100.64.0.5", 6, "10.1.1.5", 80);
        let tcp_fin = tuple(L4Proto::Tcp, "100.64.0.5", 7, "10.1.1.5", 80);
        for t in [udp1, udp2, icmp] {
            ct.outbound(&t, ip(LAN), t.dst, 0, t0).unwrap();
        }
        for t in [tcp_open, tcp_est, tcp_rst, tcp_fin] {
            ct.outbound(&t, ip(LAN), t.dst, tcp_flags::SYN, t0).unwrap();
        }
        let reply = |ct: &ConnTrack, t: &FlowTuple| ct.find_orig(t, t0).unwrap().reply;
        let (r2, rest, rrst, rfin) = (
            reply(&ct, &udp2),
            reply(&ct, &tcp_est),
            reply(&ct, &tcp_rst),
            reply(&ct, &tcp_fin),
        );
        ct.inbound(&r2, 0, t0);
        ct.inbound(&rest, tcp_flags::SYN | tcp_flags::ACK, t0);
        ct.inbound(&rrst, tcp_flags::RST, t0);
        ct.inbound(&rfin, tcp_flags::SYN | tcp_flags::ACK, t0);
        ct.outbound(
            &tcp_fin,
            ip(LAN),
            tcp_fin.dst,
            tcp_flags::FIN | tcp_flags::ACK,
            t0,
        )
        .unwrap();
        assert_eq!(
            ct.find_orig(&tcp_est, t0).unwrap().state,
            ConnState::TcpEstablished
        );
        assert_eq!(
            ct.find_orig(&tcp_rst, t0).unwrap().state,
            ConnState::TcpClosed
        );
        assert_eq!(
            ct.find_orig(&tcp_fin, t0).unwrap().state,
            ConnState::TcpClosing
        );

        assert_eq!(ct.expire(t0 + secs(9)), 0);
        assert_eq!(ct.expire(t0 + secs(10)), 1, "RST: 10 s");
        assert!(ct.find_orig(&tcp_rst, t0).is_none());
        assert_eq!(ct.expire(t0 + secs(30)), 2, "unreplied UDP and ICMP: 30 s");
        assert!(ct.find_orig(&udp1, t0).is_none() && ct.find_orig(&icmp, t0).is_none());
        assert_eq!(ct.expire(t0 + secs(180)), 1, "replied UDP: 180 s");
        assert_eq!(
            ct.expire(t0 + secs(240)),
            2,
            "TCP opening and closing: 240 s"
        );
        assert_eq!(ct.expire(t0 + secs(7439)), 0);
        assert_eq!(ct.expire(t0 + secs(7440)), 1, "TCP established: 2 h 4 min");
        assert!(ct.is_empty());
        assert_eq!(ct.stats().expired, 7);
    }

    #[test]
    fn activity_keeps_connections_alive_and_resyn_reopens() {
        let mut ct = ConnTrack::new(ConnConfig::default());
        let t0 = Instant::now();
        let t = tuple(L4Proto::Udp, "100.64.0.5", 1, "10.1.1.5", 53);
        let r = ct.outbound(&t, ip(LAN), t.dst, 0, t0).unwrap().reply;
        assert!(
            ct.inbound(&r, 0, t0 + secs(29)).is_some(),
            "replied within 30 s"
        );
        for i in 1..=10 {
            assert!(ct.inbound(&r, 0, t0 + secs(100 * i)).is_some());
        }
        assert!(
            ct.inbound(&r, 0, t0 + secs(1000 + 181)).is_none(),
            "idle out on lookup"
        );
        assert!(ct.is_empty());
        // A SYN after an RST reopens the same tuple.
        let tcp = tuple(L4Proto::Tcp, "100.64.0.5", 2, "10.1.1.5", 80);
        ct.outbound(&tcp, ip(LAN), tcp.dst, tcp_flags::SYN, t0)
            .unwrap();
        ct.outbound(&tcp, ip(LAN), tcp.dst, tcp_flags::RST, t0)
            .unwrap();
        let c = ct
            .outbound(&tcp, ip(LAN), tcp.dst, tcp_flags::SYN, t0)
            .unwrap();
        assert_eq!(c.state, ConnState::TcpOpening);
    }

    #[test]
    fn lru_eviction_when_full() {
        let mut ct = ConnTrack::new(ConnConfig {
            max_entries: 3,
            ..ConnConfig::default()
        });
        let t0 = Instant::now();
        let flows: Vec<_> = (0..4)
            .map(|i| tuple(L4Proto::Udp, "100.64.0.5", 1000 + i, "10.1.1.5", 53))
            .collect();
        for (i, f) in flows.iter().take(3).enumerate() {
            ct.outbound(f, ip(LAN), f.dst, 0, t0 + secs(i as u64))
                .unwrap();
        }
        // Touch the oldest so the second becomes least recently used.
        ct.outbound(&flows[0], ip(LAN), flows[0].dst, 0, t0 + secs(5))
            .unwrap();
        ct.outbound(&flows[3], ip(LAN), flows[3].dst, 0, t0 + secs(6))
            .unwrap();
        assert_eq!(ct.len(), 3);
        assert!(ct.find_orig(&flows[1], t0 + secs(6)).is_none());
        assert!(ct.find_orig(&flows[0], t0 + secs(6)).is_some());
        assert_eq!(ct.stats().evicted, 1);
        // Evicts across protocols by last use.
        let tcp = tuple(L4Proto::Tcp, "100.64.0.5", 9, "10.1.1.5", 80);
        ct.outbound(&tcp, ip(LAN), tcp.dst, tcp_flags::SYN, t0 + secs(7))
            .unwrap();
        assert!(ct.find_orig(&flows[2], t0 + secs(7)).is_none());
        assert_eq!(ct.stats().evicted, 2);
    }

    #[test]
    fn snat_address_change_replaces_mapping() {
        let mut ct = ConnTrack::new(ConnConfig::default());
        let t0 = Instant::now();
        let t = tuple(L4Proto::Udp, "100.64.0.5", 1, "10.1.1.5", 53);
        let r1 = ct.outbound(&t, ip(LAN), t.dst, 0, t0).unwrap().reply;
        let r2 = ct
            .outbound(&t, ip("192.168.1.2"), t.dst, 0, t0)
            .unwrap()
            .reply;
        assert_eq!(r2.dst, ip("192.168.1.2"));
        assert!(ct.inbound(&r1, 0, t0).is_none());
        assert_eq!(ct.len(), 1);
        assert_eq!(ct.stats().replaced, 1);
        assert!(ct.remove(&t).is_some());
        assert!(ct.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Out {
            client: u8,
            sport: u16,
            dst: u8,
            proto: u8,
            flags: u8,
        },
        In {
            pick: prop::sample::Index,
            flags: u8,
        },
        Advance(u16),
        Expire,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..4, 60_990u16..61_010, 0u8..3, 0u8..3, any::<u8>())
                .prop_map(|(client, sport, dst, proto, flags)| Op::Out { client, sport, dst, proto, flags }),
            3 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(pick, flags)| Op::In { pick, flags }),
            1 => (0u16..400).prop_map(Op::Advance),
            1 => Just(Op::Expire),
        ]
    }

    proptest! {
        /// Random traffic keeps the table consistent: both indexes agree, reply tuples are
        /// unique, ports stay in range, the size bound holds, LRU lists hold every entry once.
        #[test]
        fn invariants_hold(ops in proptest::collection::vec(op(), 1..300)) {
            let cfg = ConnConfig { max_entries: 20, port_range: 61_000..=61_007, ..ConnConfig::default() };
            let mut ct = ConnTrack::new(cfg);
            let mut now = Instant::now();
            for op in ops {
                match op {
                    Op::Out { client, sport, dst, proto, flags } => {
                        let proto = [L4Proto::Tcp, L4Proto::Udp, L4Proto::Icmp][proto as usize];
                        let t = FlowTuple {
                            proto,
                            src: IpAddr::from([100, 64, 0, client]),
                            sport,
                            dst: IpAddr::from([10, 1, 1, dst]),
                            dport: if proto == L4Proto::Icmp { 0 } else { 80 },
                        };
                        match ct.outbound(&t, ip(LAN), t.dst, flags, now) {
                            Ok(c) => {
                                prop_assert_eq!(c.orig, t);
                                prop_assert!((61_000..=61_007).contains(&c.reply.dport));
                            }
                            Err(e) => prop_assert_eq!(e, ConnError::PortsExhausted),
                        }
                    }
                    Op::In { pick, flags } => {
                        let replies: Vec<_> = ct.iter().map(|c| c.reply).collect();
                        if !replies.is_empty() {
                            let r = replies[pick.index(replies.len())];
                            if let Some(c) = ct.inbound(&r, flags, now) {
                                prop_assert_eq!(c.reply, r);
                            }
                        }
                    }
                    Op::Advance(s) => now += Duration::from_secs(u64::from(s)),
                    Op::Expire => { ct.expire(now); }
                }
                prop_assert!(ct.len() <= 20);
                prop_assert_eq!(ct.by_orig.len(), ct.by_reply.len());
                let mut listed = 0;
                for class in 0..CLASSES {
                    let mut i = ct.lists[class].head;
                    let mut prev = NIL;
                    while i != NIL {
                        let n = &ct.nodes[i as usize];
                        prop_assert_eq!(n.prev, prev);
                        prop_assert_eq!(n.class, class);
                        let c = n.conn.as_ref().unwrap();
                        prop_assert_eq!(c.state.class(), class);
                        prop_assert_eq!(ct.by_orig.get(&c.orig), Some(&i));
                        prop_assert_eq!(ct.by_reply.get(&c.reply), Some(&i));
                        listed += 1;
                        prev = i;
                        i = n.next;
                    }
                    prop_assert_eq!(ct.lists[class].tail, prev);
                }
                prop_assert_eq!(listed, ct.len());
            }
        }
    }
}
