//! Segmentation and coalescing, checked against independent header/checksum verification.

use proptest::prelude::*;

use super::headers::{L4Packet, PROTO_TCP, PROTO_UDP};
use super::vnet::{GsoType, VnetHdr, F_NEEDS_CSUM, VNET_HDR_LEN};
use super::{segment, Coalescer, PacketBatch, SegmentError};
use crate::nat::checksum as csum;

const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

/// A TCP packet with a 12-byte timestamp option, as the kernel hands it over with TSO.
fn tcp_packet(version: u8, seq: u32, payload: &[u8], flags: u8) -> Vec<u8> {
    let mut ip = if version == 4 {
        let mut h = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, PROTO_TCP, 0, 0];
        h.extend_from_slice(&[100, 64, 0, 1, 100, 64, 0, 2]);
        h
    } else {
        let mut h = vec![0x60, 0, 0, 0, 0, 0, PROTO_TCP, 64];
        h.extend_from_slice(&[
            0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
        ]);
        h.extend_from_slice(&[
            0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
        ]);
        h
    };
    let mut tcp = vec![0x30, 0x39, 0x14, 0x51];
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&7u32.to_be_bytes());
    tcp.extend_from_slice(&[0x80, flags, 0x01, 0xf5, 0, 0, 0, 0]);
    tcp.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3]);
    ip.extend_from_slice(&tcp);
    ip.extend_from_slice(payload);
    let l4 = L4Packet::parse(&ip).unwrap();
    let len = ip.len();
    l4.set_ip_length(&mut ip, len);
    l4.fill_l4_checksum(&mut ip);
    ip
}

fn udp_packet(payload: &[u8]) -> Vec<u8> {
    let mut p = vec![
        0x45, 0, 0, 0, 0, 1, 0, 0, 64, PROTO_UDP, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    p.extend_from_slice(&[0x13, 0x88, 0x13, 0x89, 0, 0, 0, 0]);
    p.extend_from_slice(payload);
    let udp_len = (8 + payload.len()) as u16;
    p[24..26].copy_from_slice(&udp_len.to_be_bytes());
    let l4 = L4Packet::parse(&p).unwrap();
    let len = p.len();
    l4.set_ip_length(&mut p, len);
    l4.fill_l4_checksum(&mut p);
    p
}

/// Turns a packet with a valid checksum into what TSO hands over: partial checksum.
fn as_partial(p: &mut [u8]) -> VnetHdr {
    let l4 = L4Packet::parse(p).unwrap();
    let partial = csum::fold(l4.pseudo_header_sum(p, p.len() - l4.ip_len));
    let f = l4.csum_field();
    p[f..f + 2].copy_from_slice(&partial.to_be_bytes());
    VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GsoType::None,
        ecn: false,
        hdr_len: l4.headers_len() as u16,
        gso_size: 0,
        csum_start: l4.ip_len as u16,
        csum_offset: (l4.csum_field() - l4.ip_len) as u16,
    }
}

fn checksums_valid(p: &[u8]) -> bool {
    let l4 = L4Packet::parse(p).unwrap();
    let ip_ok = l4.version == 6 || csum::fold(csum::sum(&p[..l4.ip_len], 0)) == 0xffff;
    let l4_sum = csum::sum(
        &p[l4.ip_len..],
        l4.pseudo_header_sum(p, p.len() - l4.ip_len),
    );
    ip_ok && csum::fold(l4_sum) == 0xffff
}

fn payload(p: &[u8]) -> &[u8] {
    &p[L4Packet::parse(p).unwrap().headers_len()..]
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn segment_all(version: u8, len: usize, mss: u16) -> (Vec<u8>, PacketBatch) {
    let data = pattern(len);
    let mut sup = tcp_packet(version, 1000, &data, TCP_ACK | TCP_PSH);
    let mut hdr = as_partial(&mut sup);
    hdr.gso_type = if version == 4 {
        GsoType::TcpV4
    } else {
        GsoType::TcpV6
    };
    hdr.gso_size = mss;
    let mut batch = PacketBatch::new(256 * 1024, 512);
    segment(&hdr, &sup, &mut batch).unwrap();
    (data, batch)
}

#[test]
fn tso_segments_have_fixed_headers_and_valid_checksums() {
    for version in [4, 6] {
        let (data, batch) = segment_all(version, 5000, 1200);
        assert_eq!(batch.len(), 5);
        let mut joined = Vec::new();
        for (i, seg) in batch.iter().enumerate() {
            assert!(checksums_valid(seg), "segment {i} v{version}");
            let l4 = L4Packet::parse(seg).unwrap();
            let seq = u32::from_be_bytes(seg[l4.ip_len + 4..l4.ip_len + 8].try_into().unwrap());
            assert_eq!(seq, 1000 + 1200 * i as u32);
            let psh = seg[l4.ip_len + 13] & TCP_PSH != 0;
            assert_eq!(psh, i == 4, "PSH only on the last segment");
            if version == 4 {
                assert_eq!(u16::from_be_bytes([seg[2], seg[3]]) as usize, seg.len());
                assert_eq!(u16::from_be_bytes([seg[4], seg[5]]), 0x1234 + i as u16);
            } else {
                assert_eq!(
                    u16::from_be_bytes([seg[4], seg[5]]) as usize,
                    seg.len() - 40
                );
            }
            joined.extend_from_slice(payload(seg));
        }
        assert_eq!(joined, data);
    }
}

#[test]
fn uso_segments_are_valid_datagrams() {
    let data = pattern(3000);
    let mut sup = udp_packet(&data);
    let mut hdr = as_partial(&mut sup);
    hdr.gso_type = GsoType::UdpL4;
    hdr.gso_size = 1000;
    let mut batch = PacketBatch::new(64 * 1024, 64);
    segment(&hdr, &sup, &mut batch).unwrap();
    assert_eq!(batch.len(), 3);
    for (i, seg) in batch.iter().enumerate() {
        assert!(checksums_valid(seg));
        assert_eq!(u16::from_be_bytes([seg[24], seg[25]]), 1008);
        assert_eq!(payload(seg), &data[i * 1000..(i + 1) * 1000]);
    }
}

#[test]
fn partial_checksum_is_completed() {
    let mut p = tcp_packet(4, 5, b"hello", TCP_ACK);
    let hdr = as_partial(&mut p);
    assert!(!checksums_valid(&p));
    let mut batch = PacketBatch::new(2048, 4);
    segment(&hdr, &p, &mut batch).unwrap();
    assert!(checksums_valid(batch.get(0)));
}

fn coalesce(batch: &PacketBatch) -> Vec<Vec<u8>> {
    let mut c = Coalescer::new(256 * 1024, 512);
    for p in batch.iter() {
        assert!(c.push(p));
    }
    c.finish();
    (0..c.len()).map(|i| c.get(i).to_vec()).collect()
}

#[test]
fn segments_coalesce_back_into_one_super_packet() {
    for version in [4, 6] {
        let (data, batch) = segment_all(version, 9000, 1200);
        let out = coalesce(&batch);
        assert_eq!(out.len(), 1, "v{version}");
        let hdr = VnetHdr::parse(&out[0]).unwrap();
        assert_eq!(
            hdr.gso_type,
            if version == 4 {
                GsoType::TcpV4
            } else {
                GsoType::TcpV6
            }
        );
        assert_eq!(hdr.gso_size, 1200);
        assert_eq!(hdr.flags, F_NEEDS_CSUM);
        let pkt = &out[0][VNET_HDR_LEN..];
        assert_eq!(payload(pkt), &data[..]);
        let l4 = L4Packet::parse(pkt).unwrap();
        assert_eq!(usize::from(hdr.csum_start), l4.ip_len);
        assert!(
            pkt[l4.ip_len + 13] & TCP_PSH != 0,
            "PSH of the last segment kept"
        );
        // Completing the partial checksum gives a valid packet.
        let mut done = PacketBatch::new(65536, 1);
        segment(
            &VnetHdr {
                gso_type: GsoType::None,
                ..hdr
            },
            pkt,
            &mut done,
        )
        .unwrap();
        assert!(checksums_valid(done.get(0)));
    }
}

#[test]
fn coalescing_respects_flow_order_and_flags() {
    let a = tcp_packet(4, 100, &[1; 100], TCP_ACK);
    let b = tcp_packet(4, 200, &[2; 100], TCP_ACK);
    let gap = tcp_packet(4, 400, &[3; 100], TCP_ACK);
    let pure_ack = tcp_packet(4, 500, &[], TCP_ACK);
    let syn = tcp_packet(4, 500, &[4; 10], 0x02);
    let mut batch = PacketBatch::new(65536, 16);
    for p in [&a, &b, &gap, &pure_ack, &syn] {
        batch.push_copy(p).unwrap();
    }
    let out = coalesce(&batch);
    assert_eq!(
        out.len(),
        4,
        "a+b merge; the gap, the pure ACK and the SYN stand alone"
    );
    assert_eq!(payload(&out[0][VNET_HDR_LEN..]).len(), 200);
    assert_eq!(VnetHdr::parse(&out[1]).unwrap(), VnetHdr::PLAIN);
    assert_eq!(&out[1][VNET_HDR_LEN..], &gap[..]);
}

#[test]
fn unmerged_packets_stay_whole() {
    let (_, batch) = segment_all(6, 3600, 1200);
    let mut c = Coalescer::new(65536, 16);
    for p in batch.iter() {
        assert!(c.push_unmerged(p));
    }
    // A mergeable segment after them does not join them either.
    let (_, more) = segment_all(6, 1200, 1200);
    assert!(c.push(more.get(0)));
    c.finish();
    assert_eq!(c.len(), 4);
    for (i, p) in batch.iter().enumerate() {
        assert_eq!(VnetHdr::parse(c.get(i)).unwrap(), VnetHdr::PLAIN);
        assert_eq!(&c.get(i)[VNET_HDR_LEN..], p);
    }
}

#[test]
fn malformed_gso_requests_are_refused() {
    let mut batch = PacketBatch::new(65536, 64);
    let p = tcp_packet(4, 1, &[0; 3000], TCP_ACK);
    let tso = VnetHdr {
        gso_type: GsoType::TcpV6,
        gso_size: 1000,
        ..VnetHdr::PLAIN
    };
    assert_eq!(segment(&tso, &p, &mut batch), Err(SegmentError::BadHeaders));
    let zero = VnetHdr {
        gso_type: GsoType::TcpV4,
        ..VnetHdr::PLAIN
    };
    assert_eq!(
        segment(&zero, &p, &mut batch),
        Err(SegmentError::ZeroSegmentSize)
    );
    let mut small = PacketBatch::new(2000, 64);
    let tso4 = VnetHdr {
        gso_size: 1000,
        ..zero
    };
    assert_eq!(segment(&tso4, &p, &mut small), Err(SegmentError::BatchFull));
}

proptest! {
    /// Any payload size and MSS: segmenting then coalescing gives the payload back, and each
    /// segment checks out.
    #[test]
    fn segment_then_coalesce_round_trips(len in 1usize..20000, mss in 100u16..1500, v6 in any::<bool>()) {
        let version = if v6 { 6 } else { 4 };
        let (data, batch) = segment_all(version, len, mss);
        prop_assert_eq!(batch.len(), len.div_ceil(usize::from(mss)));
        for seg in batch.iter() {
            prop_assert!(checksums_valid(seg));
        }
        let out = coalesce(&batch);
        let mut joined = Vec::new();
        for w in &out {
            joined.extend_from_slice(payload(&w[VNET_HDR_LEN..]));
        }
        prop_assert_eq!(joined, data);
    }

    /// Arbitrary bytes (and arbitrary virtio headers) never panic either side.
    #[test]
    fn junk_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..3000), hdr in proptest::collection::vec(any::<u8>(), 10)) {
        let mut batch = PacketBatch::new(65536, 64);
        if let Ok(h) = VnetHdr::parse(&hdr) {
            let _ = segment(&h, &bytes, &mut batch);
        }
        let mut c = Coalescer::new(65536, 64);
        let _ = c.push(&bytes);
        let _ = c.push(&bytes);
        c.finish();
    }
}
