//! Device-wide counters of dropped packets, by reason.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Why the userspace data path dropped a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A UDP datagram that is not a well-formed WireGuard message.
    Malformed,
    /// A handshake message with a bad MAC1 or without the MAC2 required under load.
    BadMac,
    /// A message naming a session index or peer key we do not know.
    UnknownPeer,
    /// Decryption, replay-window or handshake validation failed.
    Rejected,
    /// A decrypted packet whose inner source is not in the peer's allowed IPs.
    NotAllowedSource,
    /// A packet from the TUN whose destination matches no peer.
    NoRoute,
    /// A packet for a peer with no known endpoint.
    NoEndpoint,
    /// A packet from the TUN that is not IPv4/IPv6.
    BadTunPacket,
    /// A 4via6 packet that could not be translated.
    Untranslatable,
}

/// Atomic counters; cheap to bump from any data-path task.
#[derive(Debug, Default)]
pub struct Counters {
    drops: [AtomicU64; 9],
    /// Cookie replies sent because the device was under load.
    pub cookie_replies_sent: AtomicU64,
    /// How well the data path batches.
    pub batching: BatchCounters,
}

/// Syscalls versus packets on each side, to show how much offloads batch.
#[derive(Debug, Default)]
pub struct BatchCounters {
    /// TUN reads.
    pub tun_reads: AtomicU64,
    /// Packets those reads stood for (after segmenting super-packets).
    pub tun_read_packets: AtomicU64,
    /// UDP sends (a GSO send counts once).
    pub udp_sends: AtomicU64,
    /// UDP receives (a GRO batch counts once).
    pub udp_recvs: AtomicU64,
    /// Datagrams those receives carried.
    pub udp_recv_datagrams: AtomicU64,
    /// TUN writes (a coalesced super-packet counts once).
    pub tun_writes: AtomicU64,
    /// Packets those writes carried.
    pub tun_write_packets: AtomicU64,
    /// Receive batches read from AF_XDP sockets (replies `lan_return` redirected).
    pub xsk_reads: AtomicU64,
    /// Packets those batches carried.
    pub xsk_read_packets: AtomicU64,
}

/// A snapshot of [`BatchCounters`].
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct BatchSnapshot {
    /// TUN reads.
    pub tun_reads: u64,
    /// Packets those reads stood for.
    pub tun_read_packets: u64,
    /// UDP sends.
    pub udp_sends: u64,
    /// UDP receives.
    pub udp_recvs: u64,
    /// Datagrams received.
    pub udp_recv_datagrams: u64,
    /// TUN writes.
    pub tun_writes: u64,
    /// Packets written.
    pub tun_write_packets: u64,
    /// Receive batches read from AF_XDP sockets.
    #[serde(default)]
    pub xsk_reads: u64,
    /// Packets read from AF_XDP sockets.
    #[serde(default)]
    pub xsk_read_packets: u64,
}

impl BatchCounters {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads all counters.
    pub fn snapshot(&self) -> BatchSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BatchSnapshot {
            tun_reads: r(&self.tun_reads),
            tun_read_packets: r(&self.tun_read_packets),
            udp_sends: r(&self.udp_sends),
            udp_recvs: r(&self.udp_recvs),
            udp_recv_datagrams: r(&self.udp_recv_datagrams),
            tun_writes: r(&self.tun_writes),
            tun_write_packets: r(&self.tun_write_packets),
            xsk_reads: r(&self.xsk_reads),
            xsk_read_packets: r(&self.xsk_read_packets),
        }
    }
}

/// A snapshot of [`Counters`] for status output.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Malformed WireGuard datagrams.
    pub drop_malformed: u64,
    /// Handshake messages failing MAC1/MAC2.
    pub drop_bad_mac: u64,
    /// Messages for unknown sessions or peers.
    pub drop_unknown_peer: u64,
    /// Failed decryption, replays, stale handshakes.
    pub drop_rejected: u64,
    /// Decrypted packets from a source outside the peer's allowed IPs.
    pub drop_not_allowed_source: u64,
    /// TUN packets with no matching peer.
    pub drop_no_route: u64,
    /// TUN packets for a peer without endpoint.
    pub drop_no_endpoint: u64,
    /// TUN packets that are not IP.
    pub drop_bad_tun_packet: u64,
    /// 4via6 packets that could not be translated.
    pub drop_untranslatable: u64,
    /// Cookie replies sent under load.
    pub cookie_replies_sent: u64,
}

impl Counters {
    /// Counts one dropped packet.
    pub fn drop(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Reads all counters.
    pub fn snapshot(&self) -> CounterSnapshot {
        let d = |r: DropReason| self.drops[r as usize].load(Ordering::Relaxed);
        CounterSnapshot {
            drop_malformed: d(DropReason::Malformed),
            drop_bad_mac: d(DropReason::BadMac),
            drop_unknown_peer: d(DropReason::UnknownPeer),
            drop_rejected: d(DropReason::Rejected),
            drop_not_allowed_source: d(DropReason::NotAllowedSource),
            drop_no_route: d(DropReason::NoRoute),
            drop_no_endpoint: d(DropReason::NoEndpoint),
            drop_bad_tun_packet: d(DropReason::BadTunPacket),
            drop_untranslatable: d(DropReason::Untranslatable),
            cookie_replies_sent: self.cookie_replies_sent.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_has_its_own_counter() {
        let c = Counters::default();
        c.drop(DropReason::Malformed);
        c.drop(DropReason::BadTunPacket);
        c.drop(DropReason::BadTunPacket);
        let s = c.snapshot();
        assert_eq!(s.drop_malformed, 1);
        assert_eq!(s.drop_bad_tun_packet, 2);
        assert_eq!(s.drop_rejected, 0);
    }
}
