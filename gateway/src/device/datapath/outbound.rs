//! TUN → encrypt → UDP.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::io::offload::{segment, PacketBatch, VnetHdr, VNET_HDR_LEN};
use crate::io::udp_offload::{MAX_GSO_BYTES, MAX_GSO_SEGMENTS};
use crate::wg::TunnResult;

use super::{destination, lock, Device, DropReason, MAX_IP_PACKET, WG_OVERHEAD};
use crate::device::counters::BatchCounters;
use crate::filter::FlowCache;

/// Most segments one TUN read can turn into (64 KiB at the smallest sensible MSS, plus slack).
const MAX_SEGMENTS: usize = 192;
/// Bytes for the segments of one read: payload plus repeated headers.
const SEGMENT_BYTES: usize = MAX_IP_PACKET + MAX_SEGMENTS * 120;

/// Reads packets (or super-packets) from the TUN, encrypts them for the peer that owns the
/// destination, and sends them. Returns only on a TUN read error.
pub async fn tun_to_udp(dev: Arc<Device>) -> io::Result<()> {
    let vnet = dev.tun.offloads().vnet_hdr;
    let mut read = vec![0u8; VNET_HDR_LEN + MAX_IP_PACKET];
    let mut segments = PacketBatch::new(SEGMENT_BYTES, MAX_SEGMENTS);
    let mut out = PacketBatch::new(SEGMENT_BYTES + MAX_SEGMENTS * WG_OVERHEAD, MAX_SEGMENTS);
    let mut translated = Vec::with_capacity(MAX_IP_PACKET);
    let mut flow_cache = FlowCache::default();
    loop {
        let n = dev.tun.recv(&mut read).await?;
        segments.clear();
        if !split(&read[..n], vnet, &mut segments) {
            dev.counters.drop(DropReason::BadTunPacket);
            continue;
        }
        let batching = &dev.counters.batching;
        BatchCounters::add(&batching.tun_reads, 1);
        BatchCounters::add(&batching.tun_read_packets, segments.len() as u64);
        let Some(dst) = destination(segments.get(0)) else {
            dev.counters.drop(DropReason::BadTunPacket);
            continue;
        };
        let Some(peer) = dev.state().routes.lookup(dst).cloned() else {
            dev.counters.drop(DropReason::NoRoute);
            continue;
        };
        out.clear();
        let via = dev.state().via.clone();
        {
            let mut tunnel = lock(&peer.tunnel);
            let now = Instant::now();
            for (i, seg) in segments.iter().enumerate() {
                // Replies of 4via6 flows go back as IPv6 from the site's 4via6 address.
                let seg = match &via {
                    Some(via) if via.to_tailnet(seg, &mut translated) => &translated[..],
                    _ => seg,
                };
                // The segments of one read belong to one flow: its replies may come in.
                if i == 0 {
                    dev.filter.outbound(seg, &mut flow_cache, now);
                }
                match tunnel.encapsulate(seg, out.spare(), now) {
                    TunnResult::WriteToNetwork(d) => {
                        let len = d.len();
                        out.commit(len);
                    }
                    TunnResult::Err(e) => {
                        log::debug!("encapsulate: {e}");
                        dev.counters.drop(DropReason::Rejected);
                    }
                    _ => {}
                }
            }
        }
        if out.is_empty() {
            continue;
        }
        match peer.endpoint() {
            Some(ep) if crate::traversal::relay::region_of(ep).is_some() => {
                for i in 0..out.len() {
                    super::send(&dev, Some(&peer.public_key), out.get(i), ep).await;
                }
            }
            Some(ep) => send_batch(&dev, &out, ep).await,
            None => (0..out.len()).for_each(|_| dev.counters.drop(DropReason::NoEndpoint)),
        }
    }
}

/// Puts the packets one TUN read stands for into `segments`; false if it is malformed.
fn split(read: &[u8], vnet: bool, segments: &mut PacketBatch) -> bool {
    if !vnet {
        return segments.push_copy(read).is_some();
    }
    let Ok(hdr) = VnetHdr::parse(read) else {
        return false;
    };
    match segment(&hdr, &read[VNET_HDR_LEN..], segments) {
        Ok(()) => !segments.is_empty(),
        Err(e) => {
            log::debug!("TUN super-packet refused: {e:?}");
            false
        }
    }
}

/// Sends the datagrams of `out` to `to`, grouping runs of equal size (and one shorter last
/// datagram) into single GSO sends.
async fn send_batch(dev: &Device, out: &PacketBatch, to: SocketAddr) {
    let mut i = 0;
    while i < out.len() {
        let size = out.len_of(i);
        let mut end = i + 1;
        let mut bytes = size;
        while end < out.len()
            && end - i < MAX_GSO_SEGMENTS
            && bytes + out.len_of(end) <= MAX_GSO_BYTES
        {
            let next = out.len_of(end);
            if next > size {
                break;
            }
            bytes += next;
            end += 1;
            if next < size {
                break;
            }
        }
        BatchCounters::add(&dev.counters.batching.udp_sends, 1);
        if let Err(e) = dev
            .socket
            .send_segments(out.contiguous(i..end), size, to)
            .await
        {
            log::debug!("send to {to}: {e}");
        }
        i = end;
    }
}
