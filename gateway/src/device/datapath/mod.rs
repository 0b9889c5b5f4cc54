//! The userspace data path: TUN → encrypt → UDP ([`outbound`]), UDP → decrypt → TUN
//! ([`inbound`]), and protocol timers.
//!
//! With offloads, the outbound side reads TSO super-packets, cuts them into MTU-sized
//! segments, encrypts them under one lock and sends them with one UDP GSO `sendmsg`; the inbound
//! side receives UDP GRO batches, decrypts them and writes coalesced TCP super-packets to the
//! TUN. Tunnel locks are never held across an await: each step turns the state machine's
//! answer into an owned [`Action`] first.

pub mod inbound;
pub mod outbound;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::wg::TunnResult;

use super::{lock, Device, DropReason, Peer};

pub use inbound::udp_to_tun;
pub use outbound::{encrypt_and_send, tun_to_udp, xsk_to_udp};

/// Largest IP packet the TUN can hand over (a TSO super-packet).
pub const MAX_IP_PACKET: usize = 65535;
/// Room for the WireGuard header, padding and tag around a packet.
pub const WG_OVERHEAD: usize = 16 + 16 + 16;
/// How often protocol timers run.
pub const TIMER_TICK: Duration = Duration::from_millis(100);
/// Idle filter flows are forgotten every this many ticks (10 s).
const FILTER_EXPIRY_TICKS: u64 = 100;

/// What to do after the state machine ran: the bytes are in the caller's buffer.
enum Action {
    None,
    SendTo(usize, SocketAddr),
    SendToPeer(usize),
    ToTun { len: usize, src: IpAddr },
    Drop(DropReason),
}

fn classify(res: TunnResult<'_>, reply_to: Option<SocketAddr>) -> Action {
    match res {
        TunnResult::Done => Action::None,
        TunnResult::Err(e) => {
            log::debug!("dropped: {e:?}");
            Action::Drop(DropReason::Rejected)
        }
        TunnResult::WriteToNetwork(b) => match reply_to {
            Some(a) => Action::SendTo(b.len(), a),
            None => Action::SendToPeer(b.len()),
        },
        TunnResult::WriteToTunnelV4(b, src) => Action::ToTun {
            len: b.len(),
            src: src.into(),
        },
        TunnResult::WriteToTunnelV6(b, src) => Action::ToTun {
            len: b.len(),
            src: src.into(),
        },
    }
}

/// The destination address of an IPv4/IPv6 packet.
pub fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let b: [u8; 4] = packet[16..20].try_into().ok()?;
            Some(Ipv4Addr::from(b).into())
        }
        6 if packet.len() >= 40 => {
            let b: [u8; 16] = packet[24..40].try_into().ok()?;
            Some(Ipv6Addr::from(b).into())
        }
        _ => None,
    }
}

/// Sends a datagram to the peer's endpoint, counting a drop when it has none.
async fn send_to_peer(dev: &Device, peer: &Peer, buf: &[u8]) {
    match peer.endpoint() {
        Some(ep) => send(dev, Some(&peer.public_key), buf, ep).await,
        None => dev.counters.drop(DropReason::NoEndpoint),
    }
}

/// Sends a datagram to `to`: over UDP, or, when `to` stands for a relay region, through the
/// relay to the node `peer` (a datagram for a relay without a known peer is dropped).
async fn send(dev: &Device, peer: Option<&crate::wg::Key>, buf: &[u8], to: SocketAddr) {
    if let Some(region) = crate::traversal::relay::region_of(to) {
        let sent = match (dev.paths.get(), peer) {
            (Some(paths), Some(peer)) => paths.relay().send(region, *peer.as_bytes(), buf),
            _ => false,
        };
        if !sent {
            dev.counters.drop(DropReason::NoEndpoint);
        }
        return;
    }
    if let Err(e) = dev.socket.send_to(buf, to).await {
        log::debug!("send to {to}: {e}");
    }
}

/// Runs every peer's protocol timers (rekey, retries, keepalives) every [`TIMER_TICK`].
pub async fn timers(dev: Arc<Device>) {
    let mut out = vec![0u8; 256];
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        ticks += 1;
        if ticks.is_multiple_of(FILTER_EXPIRY_TICKS) {
            dev.filter.expire();
        }
        let peers: Vec<Arc<Peer>> = dev.state().peers.values().cloned().collect();
        for peer in peers {
            let action = classify(
                lock(&peer.tunnel).update_timers(&mut out, Instant::now()),
                None,
            );
            if let Action::SendToPeer(len) = action {
                send_to_peer(&dev, &peer, &out[..len]).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn destination_of_ip_packets() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[16..20].copy_from_slice(&[100, 64, 0, 2]);
        assert_eq!(destination(&v4), Some("100.64.0.2".parse().unwrap()));
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[24] = 0xfd;
        assert_eq!(destination(&v6), Some("fd00::".parse().unwrap()));
        assert_eq!(destination(&v6[..39]), None);
        assert_eq!(destination(&[0x50; 60]), None);
        assert_eq!(destination(&[]), None);
    }

    proptest! {
        #[test]
        fn destination_never_panics(p in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = destination(&p);
        }
    }
}
