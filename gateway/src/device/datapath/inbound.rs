//! UDP → decrypt → TUN.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::device::counters::BatchCounters;
use crate::filter::{FlowCache, Verdict};
use crate::io::offload::Coalescer;
use crate::traversal::disco;
use crate::traversal::manager::Source;
use crate::traversal::relay::{region_of, relay_addr};
use crate::wg::{Packet, Route, TunnResult, WgError};

use super::{
    classify, lock, send, send_to_peer, Action, Device, DropReason, Peer, MAX_IP_PACKET,
    WG_OVERHEAD,
};

/// Receive rounds (each one GRO batch or datagram) handled before writing to the TUN.
const MAX_RECV_ROUNDS: usize = 8;
/// Output room for coalesced packets: every round's datagrams, decrypted, plus headers.
const COALESCE_BYTES: usize = MAX_RECV_ROUNDS * (MAX_IP_PACKET + 4096);

/// Receives WireGuard datagrams, runs them through the right peer's state machine, and
/// writes decrypted packets to the TUN (coalesced when the TUN has offloads). Returns only on
/// a socket error.
pub async fn udp_to_tun(dev: Arc<Device>) -> io::Result<()> {
    let vnet = dev.tun.offloads().vnet_hdr;
    let mut rx = vec![0u8; MAX_IP_PACKET + 4096];
    let mut plain = vec![0u8; MAX_IP_PACKET + WG_OVERHEAD];
    let mut coalescer = Coalescer::new(COALESCE_BYTES, 1024);
    let mut translated = Vec::with_capacity(MAX_IP_PACKET);
    let mut flow_cache = FlowCache::default();
    let mut relay_rx = dev.take_relay_inbound();
    loop {
        let mut next = Some(match relay_rx.as_mut() {
            Some(relay) => tokio::select! {
                r = dev.socket.recv_coalesced(&mut rx) => r?,
                m = relay.recv() => match m {
                    // A datagram through a relay: handled like one from the region's
                    // relay address.
                    Some(m) if m.data.len() <= rx.len() => {
                        rx[..m.data.len()].copy_from_slice(&m.data);
                        let from = relay_addr(m.region).unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
                        (m.data.len(), from, None)
                    }
                    Some(_) => continue,
                    None => {
                        relay_rx = None;
                        continue;
                    }
                },
            },
            None => dev.socket.recv_coalesced(&mut rx).await?,
        });
        let mut rounds = 0;
        while let Some((n, src, segment)) = next {
            let now = Instant::now();
            let batching = &dev.counters.batching;
            BatchCounters::add(&batching.udp_recvs, 1);
            BatchCounters::add(
                &batching.udp_recv_datagrams,
                n.div_ceil(segment.unwrap_or(n).max(1)) as u64,
            );
            let (via, via_xdp) = {
                let st = dev.state();
                (st.via.clone(), st.via_xdp.clone())
            };
            let rules = dev.filter.snapshot();
            for datagram in rx[..n].chunks(segment.unwrap_or(n).max(1)) {
                if disco::is_disco(datagram) {
                    handle_disco(&dev, src, datagram).await;
                    continue;
                }
                if crate::stun::codec::is_binding_response(datagram) {
                    if !dev.paths.get().is_some_and(|p| p.handle_stun(datagram)) {
                        dev.counters.drop(DropReason::Malformed);
                    }
                    continue;
                }
                let Some((len, peer)) = handle_datagram(&dev, src, datagram, &mut plain, now).await
                else {
                    continue;
                };
                if let Some(rules) = &rules {
                    let verdict = dev
                        .filter
                        .inbound(rules, &plain[..len], &mut flow_cache, now);
                    if verdict != Verdict::Accept {
                        continue;
                    }
                }
                let packet = match &via {
                    Some(via) => match via.to_lan(
                        &plain[..len],
                        lock(&peer.settings).tailnet_v4(),
                        &mut translated,
                    ) {
                        Ok(true) => &translated[..],
                        Ok(false) => &plain[..len],
                        Err(e) => {
                            log::debug!("4via6: {e}");
                            dev.counters.drop(DropReason::Untranslatable);
                            continue;
                        }
                    },
                    None => &plain[..len],
                };
                // XDP translates 4via6 packets only one by one.
                let merge = !via_xdp.as_ref().is_some_and(|v| v.matches(packet));
                let push = |c: &mut Coalescer| {
                    if merge {
                        c.push(packet)
                    } else {
                        c.push_unmerged(packet)
                    }
                };
                if !vnet {
                    write_tun(&dev, packet, 1).await;
                } else if !push(&mut coalescer) {
                    flush(&dev, &mut coalescer).await;
                    if !push(&mut coalescer) {
                        dev.counters.drop(DropReason::BadTunPacket);
                    }
                }
            }
            rounds += 1;
            next = if rounds < MAX_RECV_ROUNDS {
                match dev.socket.try_recv_coalesced(&mut rx) {
                    Ok(r) => Some(r),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                    Err(e) => return Err(e),
                }
            } else {
                None
            };
        }
        flush(&dev, &mut coalescer).await;
    }
}

/// Hands a discovery message to the path manager; counted as malformed when there is none or
/// it does not authenticate.
async fn handle_disco(dev: &Device, src: SocketAddr, datagram: &[u8]) {
    let from = match region_of(src) {
        Some(r) => Source::Relay(r),
        None => Source::Udp(src),
    };
    let handled = match dev.paths.get() {
        Some(p) => p.handle(from, datagram).await,
        None => false,
    };
    if !handled {
        dev.counters.drop(DropReason::Malformed);
    }
}

async fn write_tun(dev: &Device, packet: &[u8], packets: u64) {
    let batching = &dev.counters.batching;
    BatchCounters::add(&batching.tun_writes, 1);
    BatchCounters::add(&batching.tun_write_packets, packets);
    if let Err(e) = dev.tun.send(packet).await {
        log::debug!("tun write: {e}");
    }
}

async fn flush(dev: &Device, coalescer: &mut Coalescer) {
    coalescer.finish();
    for i in 0..coalescer.len() {
        write_tun(dev, coalescer.get(i), coalescer.segments(i) as u64).await;
    }
    coalescer.clear();
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

/// Handles one datagram: answers handshakes, and returns the length of a decrypted packet
/// left in `out` for the TUN (its inner source already checked against the peer's allowed
/// IPs) with the peer it came from.
async fn handle_datagram(
    dev: &Device,
    src: SocketAddr,
    datagram: &[u8],
    out: &mut [u8],
    now: Instant,
) -> Option<(usize, Arc<Peer>)> {
    let (peer, packet) = match route_datagram(dev, src, datagram, out, now) {
        Routed::Peer(peer, packet) => (peer, packet),
        Routed::CookieReply(len) => {
            dev.counters
                .cookie_replies_sent
                .fetch_add(1, Ordering::Relaxed);
            send(dev, None, &out[..len], src).await;
            return None;
        }
        Routed::Drop(reason) => {
            dev.counters.drop(reason);
            return None;
        }
    };
    let (action, queued) = {
        let mut tunnel = lock(&peer.tunnel);
        let action = classify(
            tunnel.decapsulate_packet(Some(src), packet, out, now),
            Some(src),
        );
        (action, tunnel.queued_packets() > 0)
    };
    if let Action::Drop(r) = action {
        dev.counters.drop(r);
        return None;
    }
    // The packet authenticated: the peer is where it came from (roaming), unless the path
    // manager chooses its path.
    if !dev.path_managed(&peer.public_key) {
        peer.roam_to(src);
    }
    match action {
        Action::SendTo(len, to) => send(dev, Some(&peer.public_key), &out[..len], to).await,
        Action::SendToPeer(len) => send_to_peer(dev, &peer, &out[..len]).await,
        Action::ToTun { len, src: inner } => {
            let allowed = dev
                .state()
                .routes
                .lookup(inner)
                .is_some_and(|o| Arc::ptr_eq(o, &peer));
            if !allowed {
                dev.counters.drop(DropReason::NotAllowedSource);
                return None;
            }
            if queued {
                // The first data packet of a new session confirms it for the responder,
                // which may now send what it queued; `out` still holds this packet, so
                // flush with a separate buffer.
                let mut scratch = vec![0u8; out.len()];
                flush_queued(dev, &peer, &mut scratch).await;
            }
            return Some((len, peer));
        }
        Action::None | Action::Drop(_) => {}
    }
    // A completed handshake releases packets queued while there was no session.
    if queued || matches!(action, Action::SendTo(..)) {
        flush_queued(dev, &peer, out).await;
    }
    None
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
