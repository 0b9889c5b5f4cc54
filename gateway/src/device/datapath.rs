//! The userspace data path: TUN → encrypt → UDP, UDP → decrypt → TUN, and protocol timers.
//!
//! Tunnel locks are held only while the protocol state machine runs, never across an await:
//! each step turns the state machine's answer into an owned [`Action`] first.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use crate::wg::{Packet, Route, TunnResult, WgError};

use super::{lock, Device, DropReason, Peer};

/// Largest IP packet we read from the TUN (the MTU is far smaller).
const MAX_IP_PACKET: usize = 65535;
/// Room for the WireGuard header, padding and tag around a packet.
const WG_OVERHEAD: usize = 16 + 16 + 16;
/// How often protocol timers run.
pub const TIMER_TICK: Duration = Duration::from_millis(100);

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
        Some(ep) => send(dev, buf, ep).await,
        None => dev.counters.drop(DropReason::NoEndpoint),
    }
}

async fn send(dev: &Device, buf: &[u8], to: SocketAddr) {
    if let Err(e) = dev.socket.send_to(buf, to).await {
        log::debug!("send to {to}: {e}");
    }
}

/// Reads packets from the TUN, encrypts them for the peer that owns the destination and
/// sends them. Returns only on a TUN read error.
pub async fn tun_to_udp(dev: Arc<Device>) -> io::Result<()> {
    let mut packet = vec![0u8; MAX_IP_PACKET];
    let mut out = vec![0u8; MAX_IP_PACKET + WG_OVERHEAD];
    loop {
        let n = dev.tun.recv(&mut packet).await?;
        let packet = &packet[..n];
        let Some(dst) = destination(packet) else {
            dev.counters.drop(DropReason::BadTunPacket);
            continue;
        };
        let Some(peer) = dev.state().routes.lookup(dst).cloned() else {
            dev.counters.drop(DropReason::NoRoute);
            continue;
        };
        let action = classify(
            lock(&peer.tunnel).encapsulate(packet, &mut out, Instant::now()),
            None,
        );
        if let Action::SendToPeer(len) = action {
            send_to_peer(&dev, &peer, &out[..len]).await;
        } else if let Action::Drop(r) = action {
            dev.counters.drop(r);
        }
    }
}

/// Receives WireGuard datagrams, runs them through the right peer's state machine, and
/// writes decrypted packets to the TUN. Returns only on a socket error.
pub async fn udp_to_tun(dev: Arc<Device>) -> io::Result<()> {
    let mut datagram = vec![0u8; MAX_IP_PACKET];
    let mut out = vec![0u8; MAX_IP_PACKET + WG_OVERHEAD];
    loop {
        let (n, src) = dev.socket.recv_from(&mut datagram).await?;
        handle_datagram(&dev, src, &datagram[..n], &mut out).await;
    }
}

/// Where a received datagram goes after the interface-wide checks.
enum Routed<'a> {
    /// Counted and dropped.
    Drop(DropReason),
    /// A cookie reply of this length is in the output buffer, for the sender.
    CookieReply(usize),
    /// A verified message for this peer.
    Peer(Arc<Peer>, Packet<'a>),
}

/// Parses a datagram, checks MACs (demanding cookies under load) and finds its peer.
fn route_datagram<'a>(
    dev: &Device,
    src: SocketAddr,
    datagram: &'a [u8],
    out: &mut [u8],
    now: Instant,
) -> Routed<'a> {
    let st = dev.state();
    let is_handshake = matches!(datagram.first(), Some(1) | Some(2));
    let under_load = is_handshake && dev.load.record_handshake(now);
    let packet = match st
        .responder
        .verify_and_identify(src, datagram, under_load, out)
    {
        Ok(p) => p,
        Err(TunnResult::WriteToNetwork(reply)) => return Routed::CookieReply(reply.len()),
        Err(TunnResult::Err(WgError::Wire(_))) => return Routed::Drop(DropReason::Malformed),
        Err(_) => return Routed::Drop(DropReason::BadMac),
    };
    let peer = match st.responder.route(&packet) {
        Some(Route::PeerStatic(key)) => st.peers.get(&key),
        Some(Route::ReceiverIndex(idx)) => st.by_id.get(&(idx >> 8)),
        None => None,
    };
    match peer {
        Some(p) => Routed::Peer(p.clone(), packet),
        None => Routed::Drop(DropReason::UnknownPeer),
    }
}

/// Handles one received datagram end to end.
async fn handle_datagram(dev: &Device, src: SocketAddr, datagram: &[u8], out: &mut [u8]) {
    let now = Instant::now();
    let (peer, packet) = match route_datagram(dev, src, datagram, out, now) {
        Routed::Peer(peer, packet) => (peer, packet),
        Routed::CookieReply(len) => {
            dev.counters
                .cookie_replies_sent
                .fetch_add(1, Ordering::Relaxed);
            send(dev, &out[..len], src).await;
            return;
        }
        Routed::Drop(reason) => {
            dev.counters.drop(reason);
            return;
        }
    };
    let action = classify(
        lock(&peer.tunnel).decapsulate_packet(Some(src), packet, out, now),
        Some(src),
    );
    if let Action::Drop(r) = action {
        dev.counters.drop(r);
        return;
    }
    // The packet authenticated: the peer is where it came from (roaming).
    peer.roam_to(src);
    match action {
        Action::SendTo(len, to) => send(dev, &out[..len], to).await,
        Action::SendToPeer(len) => send_to_peer(dev, &peer, &out[..len]).await,
        Action::ToTun { len, src: inner } => {
            let allowed = dev
                .state()
                .routes
                .lookup(inner)
                .is_some_and(|o| Arc::ptr_eq(o, &peer));
            if !allowed {
                dev.counters.drop(DropReason::NotAllowedSource);
                return;
            }
            if let Err(e) = dev.tun.send(&out[..len]).await {
                log::debug!("tun write: {e}");
            }
        }
        Action::None | Action::Drop(_) => {}
    }
    // A completed handshake releases packets queued while there was no session.
    flush_queued(dev, &peer, out).await;
}

/// Sends packets a tunnel queued while it had no session.
async fn flush_queued(dev: &Device, peer: &Peer, out: &mut [u8]) {
    for _ in 0..crate::wg::MAX_QUEUED_PACKETS {
        let action = classify(lock(&peer.tunnel).next_queued(out, Instant::now()), None);
        match action {
            Action::SendToPeer(len) => send_to_peer(dev, peer, &out[..len]).await,
            _ => break,
        }
    }
}

/// Runs every peer's protocol timers (rekey, retries, keepalives) every [`TIMER_TICK`].
pub async fn timers(dev: Arc<Device>) {
    let mut out = vec![0u8; 256];
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
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
}
