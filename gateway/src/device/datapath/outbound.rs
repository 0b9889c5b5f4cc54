//! TUN → encrypt → UDP, and AF_XDP socket → encrypt → UDP.
//!
//! Both sources hand their packets to [`encrypt_and_send`]: a TUN read (the segments of one
//! super-packet, one flow) and a batch of replies `lan_return` redirected to an AF_XDP socket
//! (any flows, any peers) take the same peer lookup, 4via6 translation, filter bookkeeping,
//! encryption and (relay or GSO) send.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::afxdp::{strip_ethernet, XdpSocket};
use crate::io::offload::{segment, PacketBatch, VnetHdr, VNET_HDR_LEN};
use crate::io::udp_offload::{MAX_GSO_BYTES, MAX_GSO_SEGMENTS};
use crate::wg::TunnResult;

use super::{destination, lock, Device, DropReason, MAX_IP_PACKET, WG_OVERHEAD};
use crate::device::counters::BatchCounters;
use crate::device::peer::Peer;
use crate::filter::FlowCache;

/// Most segments one TUN read can turn into (64 KiB at the smallest sensible MSS, plus slack).
const MAX_SEGMENTS: usize = 192;
/// Bytes for the segments of one read: payload plus repeated headers.
const SEGMENT_BYTES: usize = MAX_IP_PACKET + MAX_SEGMENTS * 120;
/// Most frames taken off an AF_XDP socket's RX ring per batch (its default receive batch).
const XSK_BATCH: usize = 64;
/// Largest IP packet an AF_XDP frame can carry (a 2 KiB UMEM frame).
const XSK_PACKET: usize = 2048;

/// Buffers [`encrypt_and_send`] reuses from call to call (one set per reader).
pub struct SendScratch {
    out: PacketBatch,
    translated: Vec<u8>,
    flow_cache: FlowCache,
}

impl SendScratch {
    /// Buffers for batches of up to `max_packets` packets of `bytes` bytes in all.
    pub fn new(bytes: usize, max_packets: usize) -> SendScratch {
        SendScratch {
            out: PacketBatch::new(bytes + max_packets * WG_OVERHEAD, max_packets),
            translated: Vec::with_capacity(MAX_IP_PACKET),
            flow_cache: FlowCache::default(),
        }
    }
}

/// How the packets given to [`encrypt_and_send`] relate to each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batch {
    /// The segments of one TUN read: one flow to one peer, looked up (and recorded by the
    /// filter) once, from the first segment.
    OneFlow,
    /// Independent packets (an AF_XDP receive batch): each is looked up and recorded on its
    /// own; consecutive packets for the same peer are encrypted under one lock and sent
    /// together.
    Mixed,
}

/// Reads packets (or super-packets) from the TUN, encrypts them for the peer that owns the
/// destination, and sends them. Returns only on a TUN read error.
pub async fn tun_to_udp(dev: Arc<Device>) -> io::Result<()> {
    let vnet = dev.tun.offloads().vnet_hdr;
    let mut read = vec![0u8; VNET_HDR_LEN + MAX_IP_PACKET];
    let mut segments = PacketBatch::new(SEGMENT_BYTES, MAX_SEGMENTS);
    let mut scratch = SendScratch::new(SEGMENT_BYTES, MAX_SEGMENTS);
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
        encrypt_and_send(&dev, &segments, Batch::OneFlow, &mut scratch).await;
    }
}

/// Reads the replies `lan_return` redirects to `socket` (Ethernet frames), strips their
/// Ethernet headers and hands them, a receive batch at a time, to [`encrypt_and_send`] — the
/// same path packets read from the TUN take. Returns `Ok` once `stop` says so (or its sender
/// is gone: the fast path unregistered the socket), an error if the socket fails; the socket
/// is closed on return, after which the kernel passes that queue's replies again.
pub async fn xsk_to_udp(
    dev: Arc<Device>,
    socket: XdpSocket,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> io::Result<()> {
    let queue = socket.queue();
    // SAFETY: the socket owns its descriptor (an `OwnedFd` it never replaces), and the
    // `AsyncFd` owns the socket, so the descriptor stays open and the same until it is dropped.
    let mut fd = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
        .map_err(io::Error::from)?;
    let mut packets = PacketBatch::new(XSK_BATCH * XSK_PACKET, XSK_BATCH);
    let mut scratch = SendScratch::new(XSK_BATCH * XSK_PACKET, XSK_BATCH);
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let mut guard = tokio::select! {
            ready = fd.readable_mut() => ready?,
            _ = stop.changed() => return Ok(()),
        };
        packets.clear();
        let mut bad = 0u64;
        let got = guard.get_inner_mut().recv_batch(|frame| {
            match strip_ethernet(frame).filter(|p| p.len() <= XSK_PACKET) {
                Some(p) if packets.push_copy(p).is_some() => {}
                _ => bad += 1,
            }
        });
        (0..bad).for_each(|_| dev.counters.drop(DropReason::BadTunPacket));
        match got {
            Ok(0) => {
                guard.clear_ready();
                continue;
            }
            Ok(_) => {}
            // Descriptors outside their frame were skipped; the others were read.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                log::debug!("AF_XDP queue {queue}: {e}")
            }
            Err(e) => return Err(e),
        }
        drop(guard);
        if packets.is_empty() {
            continue;
        }
        let batching = &dev.counters.batching;
        BatchCounters::add(&batching.xsk_reads, 1);
        BatchCounters::add(&batching.xsk_read_packets, packets.len() as u64);
        encrypt_and_send(&dev, &packets, Batch::Mixed, &mut scratch).await;
    }
}

/// The peer that owns `packet`'s destination; counts a drop when there is none.
fn peer_for(dev: &Device, packet: &[u8]) -> Option<Arc<Peer>> {
    let Some(dst) = destination(packet) else {
        dev.counters.drop(DropReason::BadTunPacket);
        return None;
    };
    let peer = dev.state().routes.lookup(dst).cloned();
    if peer.is_none() {
        dev.counters.drop(DropReason::NoRoute);
    }
    peer
}

/// Encrypts `packets` (IP packets as the TUN hands them over) for the peers that own their
/// destinations and sends them: replies of 4via6 flows become IPv6 from the site's 4via6
/// address first, the filter learns the flows (so their replies may come in), and each run of
/// packets for one peer is encrypted under one lock and sent with GSO (or one by one through
/// a relay).
pub async fn encrypt_and_send(
    dev: &Device,
    packets: &PacketBatch,
    batch: Batch,
    scratch: &mut SendScratch,
) {
    let mut start = 0;
    while start < packets.len() {
        let Some(peer) = peer_for(dev, packets.get(start)) else {
            if batch == Batch::OneFlow {
                return;
            }
            start += 1;
            continue;
        };
        let end = match batch {
            Batch::OneFlow => packets.len(),
            Batch::Mixed => {
                let state = dev.state();
                let mut end = start + 1;
                while end < packets.len()
                    && destination(packets.get(end))
                        .and_then(|d| state.routes.lookup(d))
                        .is_some_and(|p| Arc::ptr_eq(p, &peer))
                {
                    end += 1;
                }
                end
            }
        };
        seal_run(dev, &peer, packets, start..end, batch, scratch);
        start = end;
        let out = &scratch.out;
        if out.is_empty() {
            continue;
        }
        match peer.endpoint() {
            Some(ep) if crate::traversal::relay::region_of(ep).is_some() => {
                for i in 0..out.len() {
                    super::send(dev, Some(&peer.public_key), out.get(i), ep).await;
                }
            }
            Some(ep) => send_batch(dev, out, ep).await,
            None => (0..out.len()).for_each(|_| dev.counters.drop(DropReason::NoEndpoint)),
        }
    }
}

/// Encrypts `packets[range]` for `peer` into `scratch.out` (cleared first).
fn seal_run(
    dev: &Device,
    peer: &Peer,
    packets: &PacketBatch,
    range: std::ops::Range<usize>,
    batch: Batch,
    scratch: &mut SendScratch,
) {
    let SendScratch {
        out,
        translated,
        flow_cache,
    } = scratch;
    out.clear();
    let via = dev.state().via.clone();
    let mut tunnel = lock(&peer.tunnel);
    let now = Instant::now();
    for (i, seg) in range.clone().map(|i| (i, packets.get(i))) {
        // Replies of 4via6 flows go back as IPv6 from the site's 4via6 address.
        let seg = match &via {
            Some(via) if via.to_tailnet(seg, translated) => &translated[..],
            _ => seg,
        };
        // The segments of one read belong to one flow: its replies may come in.
        if batch == Batch::Mixed || i == range.start {
            dev.filter.outbound(seg, flow_cache, now);
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
