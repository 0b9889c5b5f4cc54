//! Protocol scenarios between two in-memory tunnels: handshakes, transport, replay, cookies,
//! timers, rotation, simultaneous initiation, and fuzzing of every entry point.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::messages::{parse_packet, Packet};
use super::timers::{
    KEEPALIVE_TIMEOUT, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME, REKEY_ATTEMPT_TIME, REKEY_TIMEOUT, ZERO_KEYS_AFTER,
};
use super::{Key, Responder, Route, TunnResult, Tunnel, WgError, MAX_QUEUED_PACKETS};

/// A `TunnResult` with owned bytes, for comparing and passing around.
#[derive(Debug, Clone, PartialEq)]
enum Out {
    Done,
    Err(WgError),
    Net(Vec<u8>),
    V4(Vec<u8>, Ipv4Addr),
    V6(Vec<u8>, Ipv6Addr),
}

fn own(r: TunnResult<'_>) -> Out {
    match r {
        TunnResult::Done => Out::Done,
        TunnResult::Err(e) => Out::Err(e),
        TunnResult::WriteToNetwork(b) => Out::Net(b.to_vec()),
        TunnResult::WriteToTunnelV4(b, a) => Out::V4(b.to_vec(), a),
        TunnResult::WriteToTunnelV6(b, a) => Out::V6(b.to_vec(), a),
    }
}

fn enc(t: &mut Tunnel, pkt: &[u8], now: Instant) -> Out {
    let mut buf = vec![0u8; 2048];
    own(t.encapsulate(pkt, &mut buf, now))
}

fn dec(t: &mut Tunnel, datagram: &[u8], now: Instant) -> Out {
    let mut buf = vec![0u8; 2048];
    own(t.decapsulate(Some(src()), datagram, &mut buf, now))
}

fn tick(t: &mut Tunnel, now: Instant) -> Out {
    let mut buf = vec![0u8; 256];
    own(t.update_timers(&mut buf, now))
}

fn queued(t: &mut Tunnel, now: Instant) -> Out {
    let mut buf = vec![0u8; 2048];
    own(t.next_queued(&mut buf, now))
}

fn net(o: Out) -> Vec<u8> {
    match o {
        Out::Net(b) => b,
        other => panic!("expected a datagram, got {other:?}"),
    }
}

fn kind(b: &[u8]) -> u8 {
    b[0]
}

fn src() -> SocketAddr {
    "192.0.2.7:51820".parse().unwrap()
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// A well-formed IPv4/UDP packet from 10.0.0.1 to 10.0.0.2 with `payload`.
fn ipv4(payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    p[28..].copy_from_slice(payload);
    p
}

fn ipv6(payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40 + payload.len()];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    p[6] = 59;
    p[8..24].copy_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
    p[24..40].copy_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
    p[40..].copy_from_slice(payload);
    p
}

struct Peers {
    a: Tunnel,
    b: Tunnel,
    ka: Key,
    kb: Key,
    t0: Instant,
}

fn peers_with(psk_a: Option<Key>, psk_b: Option<Key>, ka_keepalive: Option<u16>) -> Peers {
    let ka = Key::generate_private();
    let kb = Key::generate_private();
    let t0 = Instant::now();
    let a = Tunnel::new(ka, kb.public_key(), psk_a, ka_keepalive, 0x0000_0100, t0);
    let b = Tunnel::new(kb, ka.public_key(), psk_b, None, 0x0000_0200, t0);
    Peers { a, b, ka, kb, t0 }
}

fn peers() -> Peers {
    peers_with(None, None, None)
}

/// Runs a complete handshake initiated by `a` at `now` (a confirms with a keepalive).
fn establish(a: &mut Tunnel, b: &mut Tunnel, now: Instant) {
    let mut buf = [0u8; 256];
    let init = net(own(a.force_handshake(&mut buf, now)));
    assert_eq!(kind(&init), 1);
    let resp = net(dec(b, &init, now));
    assert_eq!((kind(&resp), resp.len()), (2, 92));
    // A keepalive, or the first packet queued before the handshake.
    let confirm = net(dec(a, &resp, now));
    assert_eq!(kind(&confirm), 4);
    assert!(matches!(dec(b, &confirm, now), Out::Done | Out::V4(..)));
    assert!(a.is_established() && b.is_established());
}

// ------------------------------------------------------------------ handshake and transport

#[test]
fn local_key_rotation_keeps_sessions_and_next_handshake_uses_the_new_key() {
    let Peers {
        mut a,
        mut b,
        kb,
        t0,
        ..
    } = peers();
    establish(&mut a, &mut b, t0);
    let ka2 = Key::generate_private();
    a.set_local_static(ka2);
    assert_eq!(a.local_public(), &ka2.public_key());
    // The established session still carries traffic both ways.
    let d = net(enc(&mut a, &ipv4(b"after rotation"), t0));
    assert!(matches!(dec(&mut b, &d, t0), Out::V4(..)));
    let d = net(enc(&mut b, &ipv4(b"back"), t0));
    assert!(matches!(dec(&mut a, &d, t0), Out::V4(..)));
    // b does not know the new key yet: a's next initiation is not for it.
    let t1 = t0 + REKEY_TIMEOUT + secs(1.0);
    let mut buf = [0u8; 256];
    let init = net(own(a.force_handshake(&mut buf, t1)));
    assert!(matches!(dec(&mut b, &init, t1), Out::Err(_)));
    // Once b has the new key (a new tunnel, as a netmap update makes), handshakes succeed.
    let mut b2 = Tunnel::new(kb, ka2.public_key(), None, None, 0x0000_0300, t1);
    establish(&mut a, &mut b2, t1 + REKEY_TIMEOUT + secs(1.0));
}

fn full_exchange(psk: Option<Key>) {
    let Peers {
        mut a, mut b, t0, ..
    } = peers_with(psk, psk, None);
    let p1 = ipv4(b"hello from a");
    // No session: the packet is queued and an initiation goes out.
    let init = net(enc(&mut a, &p1, t0));
    assert_eq!((kind(&init), init.len()), (1, 148));
    assert_eq!(a.queued_packets(), 1);
    // Another packet while the initiation is in flight: queued, nothing sent.
    assert_eq!(enc(&mut a, &ipv4(b"second"), t0), Out::Done);

    let resp = net(dec(&mut b, &init, t0));
    assert_eq!(kind(&resp), 2);
    assert!(
        b.stats().last_handshake.is_none(),
        "responder: not complete until confirmed"
    );
    // The initiator answers the response with its first queued packet...
    let d1 = net(dec(&mut a, &resp, t0));
    assert_eq!(kind(&d1), 4);
    assert_eq!(
        d1.len(),
        16 + p1.len().next_multiple_of(16) + 16,
        "padded to 16"
    );
    // ...and releases the rest through next_queued.
    let d2 = net(queued(&mut a, t0));
    assert_eq!(queued(&mut a, t0), Out::Done);
    assert_eq!(a.queued_packets(), 0);

    assert_eq!(
        dec(&mut b, &d1, t0),
        Out::V4(p1.clone(), Ipv4Addr::new(10, 0, 0, 1))
    );
    assert_eq!(
        dec(&mut b, &d2, t0),
        Out::V4(ipv4(b"second"), Ipv4Addr::new(10, 0, 0, 1))
    );

    // The other way, IPv6 this time.
    let p6 = ipv6(b"hello from b");
    let d3 = net(enc(&mut b, &p6, t0));
    assert_eq!(
        dec(&mut a, &d3, t0),
        Out::V6(p6, "fd00::1".parse().unwrap())
    );

    let (sa, sb) = (a.stats(), b.stats());
    assert!(sa.last_handshake.is_some() && sb.last_handshake.is_some());
    assert_eq!(sa.tx_bytes, (148 + d1.len() + d2.len()) as u64);
    assert_eq!(sa.rx_bytes, (92 + d3.len()) as u64);
    assert_eq!(sb.tx_bytes, sa.rx_bytes);
    assert_eq!(sb.rx_bytes, sa.tx_bytes);
    assert_eq!((sa.handshakes, sb.handshakes), (1, 1));
    assert_eq!(a.endpoint(), Some(src()));
}

#[test]
fn handshake_and_transport_without_psk() {
    full_exchange(None);
}

#[test]
fn handshake_and_transport_with_psk() {
    full_exchange(Some(Key::generate_preshared()));
}

#[test]
fn mismatched_psk_fails_the_handshake() {
    let Peers {
        mut a, mut b, t0, ..
    } = peers_with(
        Some(Key::generate_preshared()),
        Some(Key::generate_preshared()),
        None,
    );
    let init = net(enc(&mut a, &ipv4(b"x"), t0));
    let resp = net(dec(&mut b, &init, t0));
    assert_eq!(dec(&mut a, &resp, t0), Out::Err(WgError::DecryptionFailed));
    assert!(!a.is_established());
    // A forged response does not kill the handshake in flight: after fixing the PSK, a real
    // response for the same initiation is still accepted.
}

#[test]
fn responder_waits_for_confirmation_before_sending() {
    let Peers {
        mut a, mut b, t0, ..
    } = peers();
    let init = net(enc(&mut a, &ipv4(b"a1"), t0));
    let resp = net(dec(&mut b, &init, t0));
    // b only has a `next` session: it queues and does not start a competing handshake.
    assert_eq!(enc(&mut b, &ipv4(b"b1"), t0), Out::Done);
    assert_eq!(b.queued_packets(), 1);
    assert!(!b.is_established());
    let d = net(dec(&mut a, &resp, t0));
    assert!(matches!(dec(&mut b, &d, t0), Out::V4(..)));
    // Confirmed: b's queue drains.
    let q = net(queued(&mut b, t0));
    assert_eq!(
        dec(&mut a, &q, t0),
        Out::V4(ipv4(b"b1"), Ipv4Addr::new(10, 0, 0, 1))
    );
    assert_eq!(b.stats().handshakes, 1);
}

#[test]
fn decapsulate_with_empty_datagram_flushes_the_queue() {
    let Peers {
        mut a, mut b, t0, ..
    } = peers();
    let init = net(enc(&mut a, &ipv4(b"1"), t0));
    enc(&mut a, &ipv4(b"2"), t0);
    let resp = net(dec(&mut b, &init, t0));
    net(dec(&mut a, &resp, t0));
    let mut buf = vec![0u8; 2048];
    assert!(matches!(
        a.decapsulate(None, &[], &mut buf, t0),
        TunnResult::WriteToNetwork(_)
    ));
    assert!(matches!(
        a.decapsulate(None, &[], &mut buf, t0),
        TunnResult::Done
    ));
}

#[test]
fn queue_is_bounded() {
    let Peers { mut a, t0, .. } = peers();
    for i in 0..MAX_QUEUED_PACKETS + 10 {
        enc(&mut a, &ipv4(&[i as u8]), t0);
    }
    assert_eq!(a.queued_packets(), MAX_QUEUED_PACKETS);
    assert_eq!(a.stats().queue_drops, 10);
}

#[test]
fn session_indices_carry_the_peer_id() {
    let Peers {
        mut a, mut b, t0, ..
    } = peers();
    let init = net(enc(&mut a, &ipv4(b"x"), t0));
    let Ok(Packet::HandshakeInit(i)) = parse_packet(&init) else {
        panic!()
    };
    assert_eq!(i.sender_index >> 8, 0x01);
    let resp = net(dec(&mut b, &init, t0));
    let Ok(Packet::HandshakeResponse(r)) = parse_packet(&resp) else {
        panic!()
    };
    assert_eq!(r.sender_index >> 8, 0x02);
    assert_eq!(r.receiver_index, i.sender_index);
    assert!(b.owns_index(r.sender_index) && !b.owns_index(i.sender_index));
}

#[test]
fn invalid_inner_packets_are_dropped() {
    let Peers {
        mut a, mut b, t0, ..
    } = peers();
    establish(&mut a, &mut b, t0);
    let mut bad = ipv4(b"abc");
    bad[2..4].copy_from_slice(&200u16.to_be_bytes()); // claims more than it has
    let d = net(enc(&mut a, &bad, t0));
    assert_eq!(dec(&mut b, &d, t0), Out::Err(WgError::InvalidInnerPacket));
    let d = net(enc(&mut a, &[0x50; 40], t0));
    assert_eq!(dec(&mut b, &d, t0), Out::Err(WgError::InvalidInnerPacket));
    // Padding after a shorter IPv4 total length is trimmed.
    let mut p = ipv4(b"abcdef");
    p.extend_from_slice(&[0xee; 7]);
    let d = net(enc(&mut a, &p, t0));
    assert_eq!(
        dec(&mut b, &d, t0),
        Out::V4(ipv4(b"abcdef"), Ipv4Addr::new(10, 0, 0, 1))
    );
}

#[test]
fn small_destination_buffers_are_errors() {
    let Peers {
        mut a, mut b, t0, ..
    } = peers();
    let mut small = [0u8; 100];
    assert!(matches!(
        a.encapsulate(&ipv4(b"x"), &mut small, t0),
        TunnResult::Err(WgError::DestinationBufferTooSmall)
    ));
    establish(&mut a, &mut b, t0);
    let d = net(enc(&mut a, &ipv4(&[7; 200]), t0));
    assert!(matches!(
        b.decapsulate(None, &d, &mut small, t0),
        TunnResult::Err(WgError::DestinationBufferTooSmall)
    ));
    // The failed attempt did not burn the counter: the packet still decrypts.
    assert!(matches!(dec(&mut b, &d, t0), Out::V4(..)));
}

// ------------------------------------------------------------------ replay

#[test]
fn replay_protection() {
    let Peers {
        mut a, mut b, t0, ..
    } = peers();
    establish(&mut a, &mut b, t0);
    let pkts: Vec<Vec<u8>> = (0..4u8)
        .map(|i| net(enc(&mut a, &ipv4(&[i]), t0)))
        .collect();
    // Out of order within the window is fine.
    for i in [2, 0, 3, 1] {
        assert!(
            matches!(dec(&mut b, &pkts[i], t0), Out::V4(..)),
            "packet {i}"
        );
    }
    // Duplicates are not.
    for p in &pkts {
        assert_eq!(dec(&mut b, p, t0), Out::Err(WgError::Replayed));
    }
    // Too old: jump the sender's counter far ahead, deliver that, then an old one.
    let old = net(enc(&mut a, &ipv4(b"old"), t0));
    a.current.as_mut().unwrap().set_send_counter(1_000_000);
    let new = net(enc(&mut a, &ipv4(b"new"), t0));
    assert!(matches!(dec(&mut b, &new, t0), Out::V4(..)));
    assert_eq!(dec(&mut b, &old, t0), Out::Err(WgError::Replayed));
    // A tampered packet neither decrypts nor poisons the window.
    let mut p = net(enc(&mut a, &ipv4(b"t"), t0));
    let last = p.len() - 1;
    p[last] ^= 1;
    assert_eq!(dec(&mut b, &p, t0), Out::Err(WgError::DecryptionFailed));
    p[last] ^= 1;
    assert!(matches!(dec(&mut b, &p, t0), Out::V4(..)));
}

#[test]
fn replayed_and_flooded_initiations_are_rejected() {
    let Peers {
        mut a, mut b, t0, ..
    } = peers();
    let init1 = net(enc(&mut a, &ipv4(b"x"), t0));
    assert_eq!(kind(&net(dec(&mut b, &init1, t0))), 2);
    assert_eq!(
        dec(&mut b, &init1, t0 + secs(1.0)),
        Out::Err(WgError::ReplayedInitiation)
    );
    // A newer initiation 10 ms after the last accepted one is a flood; 30 ms is fine.
    let mut buf = [0u8; 256];
    let init2 = net(own(a.send_initiation(&mut buf, t0 + secs(0.005))));
    assert_eq!(
        dec(&mut b, &init2, t0 + secs(0.010)),
        Out::Err(WgError::InitiationFlood)
    );
    assert_eq!(kind(&net(dec(&mut b, &init2, t0 + secs(0.030)))), 2);
}

#[test]
fn initiation_timestamps_strictly_increase() {
    let Peers { mut a, t0, .. } = peers();
    let x = a.next_timestamp(t0);
    let y = a.next_timestamp(t0);
    let z = a.next_timestamp(t0 + secs(3.0));
    assert!(x < y && y < z);
}

#[test]
fn initiation_from_another_key_is_wrong_peer() {
    let Peers { mut b, kb, t0, .. } = peers();
    let kc = Key::generate_private();
    let mut c = Tunnel::new(kc, kb.public_key(), None, None, 0x300, t0);
    let init = net(enc(&mut c, &ipv4(b"x"), t0));
    assert_eq!(dec(&mut b, &init, t0), Out::Err(WgError::WrongPeer));
    // The device would have routed it elsewhere:
    let r = Responder::new(kb);
    let p = parse_packet(&init).unwrap();
    assert_eq!(r.route(&p), Some(Route::PeerStatic(kc.public_key())));
}

#[test]
fn response_without_initiation_is_unexpected() {
    let Peers {
        mut a, mut b, t0, ..
    } = peers();
    let init = net(enc(&mut a, &ipv4(b"x"), t0));
    let resp = net(dec(&mut b, &init, t0));
    assert!(matches!(dec(&mut a, &resp, t0), Out::Net(_)));
    assert_eq!(dec(&mut a, &resp, t0), Out::Err(WgError::UnexpectedPacket));
}

// ------------------------------------------------------------------ cookies / device front door

#[test]
fn cookie_round_trip_under_load() {
    let Peers {
        mut a,
        mut b,
        ka,
        kb,
        t0,
    } = peers();
    let rb = Responder::new(kb);
    let mut out = [0u8; 256];
    let init = net(enc(&mut a, &ipv4(b"x"), t0));

    // Not under load: accepted with MAC1 alone, routed to a's static key.
    let p = rb
        .verify_and_identify_at(src(), &init, false, &mut out, t0)
        .unwrap();
    assert_eq!(rb.route(&p), Some(Route::PeerStatic(ka.public_key())));

    // Under load: a cookie reply comes back instead.
    let reply = match rb.verify_and_identify_at(src(), &init, true, &mut out, t0) {
        Err(TunnResult::WriteToNetwork(r)) => r.to_vec(),
        other => panic!("{other:?}"),
    };
    assert_eq!((kind(&reply), reply.len()), (3, 64));
    let p = parse_packet(&reply).unwrap();
    assert_eq!(
        p.receiver_index(),
        Some(u32::from_le_bytes(init[4..8].try_into().unwrap()))
    );
    assert_eq!(dec(&mut a, &reply, t0), Out::Done);
    // A replayed cookie reply is useless (its MAC1 was consumed).
    assert_eq!(dec(&mut a, &reply, t0), Out::Err(WgError::UnexpectedPacket));

    // The retry 5 s later carries MAC2 and passes, even under load.
    let t1 = t0 + REKEY_TIMEOUT + secs(0.4);
    let init2 = net(tick(&mut a, t1));
    assert_eq!(kind(&init2), 1);
    assert_ne!(&init2[132..], &[0u8; 16]);
    let p = rb
        .verify_and_identify_at(src(), &init2, true, &mut out, t1)
        .unwrap();
    let Packet::HandshakeInit(m) = p else {
        panic!()
    };
    assert_eq!(rb.identify_initiator(&m), Some(ka.public_key()));
    let resp = net(own(b.decapsulate_packet(Some(src()), p, &mut out, t1)));
    // The cookie is bound to the source address: from elsewhere it is not valid.
    let other: SocketAddr = "198.51.100.1:51820".parse().unwrap();
    assert!(matches!(
        rb.verify_and_identify_at(other, &init2, true, &mut out, t1),
        Err(TunnResult::WriteToNetwork(_))
    ));
    // Responses are checked the same way (here, a's responder, not under load).
    let ra = Responder::new(ka);
    assert!(ra
        .verify_and_identify_at(src(), &resp, false, &mut out, t1)
        .is_ok());
    assert!(matches!(dec(&mut a, &resp, t1), Out::Net(_)));

    // Once the secret is older than two minutes, the old cookie no longer counts.
    let t2 = t0 + secs(121.0);
    assert!(matches!(
        rb.verify_and_identify_at(src(), &init2, true, &mut out, t2),
        Err(TunnResult::WriteToNetwork(_))
    ));
}

#[test]
fn rate_limit_with_valid_cookies() {
    let Peers { mut a, kb, t0, .. } = peers();
    let rb = Responder::new(kb);
    let mut out = [0u8; 256];
    let init = net(enc(&mut a, &ipv4(b"x"), t0));
    let Err(TunnResult::WriteToNetwork(reply)) =
        rb.verify_and_identify_at(src(), &init, true, &mut out, t0)
    else {
        panic!()
    };
    let reply = reply.to_vec();
    dec(&mut a, &reply, t0);
    let t1 = t0 + secs(5.5);
    let init2 = net(tick(&mut a, t1));
    let mut allowed = 0;
    for _ in 0..10 {
        match rb.verify_and_identify_at(src(), &init2, true, &mut out, t1) {
            Ok(_) => allowed += 1,
            Err(TunnResult::Err(WgError::RateLimited)) => {}
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(allowed, 5, "burst of 5 per source");
}

#[test]
fn responder_rejects_bad_mac1_and_junk() {
    let Peers { mut a, kb, t0, .. } = peers();
    let rb = Responder::new(kb);
    let mut out = [0u8; 256];
    let mut init = net(enc(&mut a, &ipv4(b"x"), t0));
    init[20] ^= 0x80;
    assert!(matches!(
        rb.verify_and_identify_at(src(), &init, false, &mut out, t0),
        Err(TunnResult::Err(WgError::InvalidMac1))
    ));
    assert!(!rb.check_mac1(&init));
    assert!(matches!(
        rb.verify_and_identify_at(src(), &[1, 2, 3], false, &mut out, t0),
        Err(TunnResult::Err(WgError::Wire(_)))
    ));
    // Data packets are passed through for routing by index.
    let mut data = vec![0u8; 48];
    data[0] = 4;
    data[4..8].copy_from_slice(&0x0000_0207u32.to_le_bytes());
    let p = rb
        .verify_and_identify_at(src(), &data, true, &mut out, t0)
        .unwrap();
    assert_eq!(rb.route(&p), Some(Route::ReceiverIndex(0x207)));
}

// ------------------------------------------------------------------ timers

#[test]
fn initiator_rekeys_after_rekey_after_time() {
    let Peers {
        mut a, mut b, t0, ..
    } = peers();
    establish(&mut a, &mut b, t0);
    let t = t0 + secs(60.0);
    net(enc(&mut a, &ipv4(b"x"), t));
    assert_eq!(tick(&mut a, t), Out::Done);
    let t = t0 + REKEY_AFTER_TIME + secs(1.0);
    // Sending on a 121 s old session still works, and asks for a new handshake.
    assert_eq!(kind(&net(enc(&mut a, &ipv4(b"x"), t))), 4);
    let init = net(tick(&mut a, t));
    assert_eq!(kind(&init), 1);
    // The responder of the old session does not rekey on time.
    assert_eq!(kind(&net(enc(&mut b, &ipv4(b"y"), t))), 4);
    assert_eq!(tick(&mut b, t), Out::Done);
    // Complete it: new sessions on both sides.
    let resp = net(dec(&mut b, &init, t));
    let conf = net(dec(&mut a, &resp, t));
    assert_eq!(dec(&mut b, &conf, t), Out::Done);
    assert_eq!((a.stats().handshakes, b.stats().handshakes), (2, 2));
}

#[test]
fn rekey_after_messages_and_reject_after_messages() {
    let Peers {
        mut a, mut b, t0, ..
    } = peers();
    establish(&mut a, &mut b, t0);
    a.current
        .as_mut()
        .unwrap()
        .set_send_counter(REKEY_AFTER_MESSAGES - 1);
    let t = t0 + REKEY_TIMEOUT; // past the initiation rate limit
    assert_eq!(kind(&net(enc(&mut a, &ipv4(b"x"), t))), 4);
    assert_eq!(
        tick(&mut a, t),
        Out::Done,
        "not more than REKEY_AFTER_MESSAGES yet"
    );
    assert_eq!(kind(&net(enc(&mut a, &ipv4(b"x"), t))), 4);
    assert_eq!(kind(&net(tick(&mut a, t))), 1);

    let Peers {
        mut a, mut b, t0, ..
    } = peers();
    establish(&mut a, &mut b, t0);
    b.current
        .as_mut()
        .unwrap()
        .set_send_counter(REJECT_AFTER_MESSAGES);
    // Out of nonces: the packet is queued and b (the responder) initiates.
    assert_eq!(kind(&net(enc(&mut b, &ipv4(b"x"), t0))), 1);
    assert_eq!(b.queued_packets(), 1);
}

#[test]
fn sessions_are_rejected_after_reject_after_time() {
    let Peers {
        mut a, mut b, t0, ..
    } = peers();
    establish(&mut a, &mut b, t0);
    let late = net(enc(&mut a, &ipv4(b"x"), t0 + secs(170.0)));
    let t = t0 + REJECT_AFTER_TIME + secs(0.5);
    assert_eq!(dec(&mut b, &late, t), Out::Err(WgError::SessionExpired));
    // Sending at 180 s: the old session is not used; a handshake starts instead.
    let out = net(enc(&mut a, &ipv4(b"y"), t));
    assert_eq!(kind(&out), 1);
    assert_eq!(a.queued_packets(), 1);
    // The timer tick drops expired sessions.
    tick(&mut b, t);
    assert!(!b.is_established());
}

#[test]
fn lastminute_rekey_when_initiator_only_receives() {
    let Peers {
        mut a, mut b, t0, ..
    } = peers();
    establish(&mut a, &mut b, t0);
    let t = t0 + secs(150.0);
    let d = net(enc(&mut b, &ipv4(b"x"), t));
    assert!(matches!(dec(&mut a, &d, t), Out::V4(..)));
    assert!(!matches!(tick(&mut a, t), Out::Net(ref p) if kind(p) == 1));
    let t = t0 + REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT + secs(1.0);
    let d = net(enc(&mut b, &ipv4(b"x"), t));
    assert!(matches!(dec(&mut a, &d, t), Out::V4(..)));
    assert_eq!(kind(&net(tick(&mut a, t))), 1);
}

#[test]
fn keepalive_after_receiving_without_sending() {
    let Peers {
        mut a, mut b, t0, ..
    } = peers();
    establish(&mut a, &mut b, t0);
    let t1 = t0 + secs(1.0);
    let d = net(enc(&mut a, &ipv4(b"x"), t1));
    assert!(matches!(dec(&mut b, &d, t1), Out::V4(..)));
    assert_eq!(tick(&mut b, t1 + secs(9.9)), Out::Done);
    let ka = net(tick(&mut b, t1 + KEEPALIVE_TIMEOUT));
    assert_eq!((kind(&ka), ka.len()), (4, 32));
    assert_eq!(dec(&mut a, &ka, t1 + KEEPALIVE_TIMEOUT), Out::Done);
    assert_eq!(
        tick(&mut b, t1 + secs(30.0)),
        Out::Done,
        "only one keepalive"
    );

    // If b answers with data in time, no keepalive is needed.
    let t2 = t0 + secs(40.0);
    let d = net(enc(&mut a, &ipv4(b"x"), t2));
    dec(&mut b, &d, t2);
    net(enc(&mut b, &ipv4(b"reply"), t2 + secs(1.0)));
    assert_eq!(tick(&mut b, t2 + secs(11.0)), Out::Done);
}

#[test]
fn new_handshake_when_data_gets_no_reply() {
    let Peers {
        mut a, mut b, t0, ..
    } = peers();
    establish(&mut a, &mut b, t0);
    let t1 = t0 + secs(1.0);
    net(enc(&mut a, &ipv4(b"x"), t1));
    assert_eq!(tick(&mut a, t1 + secs(14.9)), Out::Done);
    let init = net(tick(
        &mut a,
        t1 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + secs(0.34),
    ));
    assert_eq!(kind(&init), 1);
}

#[test]
fn persistent_keepalive() {
    let Peers {
        mut a, mut b, t0, ..
    } = peers_with(None, None, Some(25));
    assert_eq!(a.persistent_keepalive(), Some(25));
    // Turning it on starts a handshake at the next tick.
    let init = net(tick(&mut a, t0));
    assert_eq!(kind(&init), 1);
    let resp = net(dec(&mut b, &init, t0));
    let conf = net(dec(&mut a, &resp, t0));
    dec(&mut b, &conf, t0);
    assert_eq!(tick(&mut a, t0 + secs(24.9)), Out::Done);
    let k = net(tick(&mut a, t0 + secs(25.0)));
    assert_eq!((kind(&k), k.len()), (4, 32));
    // Any authenticated packet postpones it (here a keepalive sent by hand).
    net(enc(&mut a, &[], t0 + secs(40.0)));
    assert_eq!(tick(&mut a, t0 + secs(64.9)), Out::Done);
    assert_eq!(kind(&net(tick(&mut a, t0 + secs(65.0)))), 4);
    // Turning it off stops it.
    a.set_persistent_keepalive(None, t0 + secs(66.0));
    assert_eq!(tick(&mut a, t0 + secs(95.0)), Out::Done);
    assert_eq!(a.persistent_keepalive(), None);
}

#[test]
fn handshake_retries_every_rekey_timeout_then_gives_up() {
    let Peers { mut a, t0, .. } = peers();
    let first = net(enc(&mut a, &ipv4(b"x"), t0));
    assert_eq!(tick(&mut a, t0 + secs(4.9)), Out::Done);
    let mut inits = vec![(Duration::ZERO, first)];
    let mut gave_up_at = None;
    let mut t = Duration::ZERO;
    while t < Duration::from_secs(200) {
        t += Duration::from_millis(100);
        match tick(&mut a, t0 + t) {
            Out::Net(p) => {
                assert_eq!(kind(&p), 1);
                inits.push((t, p));
            }
            Out::Err(WgError::ConnectionExpired) => {
                assert!(gave_up_at.is_none());
                gave_up_at = Some(t);
            }
            Out::Done => {}
            other => panic!("{other:?}"),
        }
    }
    // Retries 5.0–5.4 s apart (REKEY_TIMEOUT + jitter), each a new initiation.
    for w in inits.windows(2) {
        let gap = w[1].0 - w[0].0;
        assert!(
            gap >= REKEY_TIMEOUT && gap <= REKEY_TIMEOUT + secs(0.45),
            "{gap:?}"
        );
        assert_ne!(w[0].1[4..8], w[1].1[4..8], "fresh sender index");
    }
    let gave_up_at = gave_up_at.expect("gave up");
    assert!(gave_up_at >= REKEY_ATTEMPT_TIME && gave_up_at < REKEY_ATTEMPT_TIME + secs(6.0));
    assert!(inits.last().unwrap().0 < gave_up_at);
    assert_eq!(a.queued_packets(), 0);
    assert_eq!(a.stats().queue_drops, 1);
    // New traffic starts over.
    assert_eq!(kind(&net(enc(&mut a, &ipv4(b"y"), t0 + secs(201.0)))), 1);
}

#[test]
fn at_most_one_initiation_per_rekey_timeout() {
    let Peers { mut a, t0, .. } = peers();
    let mut buf = [0u8; 256];
    assert!(matches!(
        a.force_handshake(&mut buf, t0),
        TunnResult::WriteToNetwork(_)
    ));
    for ms in (0..5000).step_by(250) {
        let t = t0 + Duration::from_millis(ms);
        assert_eq!(enc(&mut a, &ipv4(b"x"), t), Out::Done);
        assert!(matches!(a.force_handshake(&mut buf, t), TunnResult::Done));
    }
    assert!(matches!(
        a.force_handshake(&mut buf, t0 + REKEY_TIMEOUT),
        TunnResult::WriteToNetwork(_)
    ));
}

#[test]
fn keys_are_erased_after_three_reject_after_times() {
    let Peers {
        mut a, mut b, t0, ..
    } = peers();
    establish(&mut a, &mut b, t0);
    // Nothing happens for a long time (no traffic, so no rekey).
    tick(&mut a, t0 + secs(200.0));
    assert!(!a.is_established(), "expired after 180 s");
    assert!(a.previous.is_none() && a.next.is_none());
    let t = t0 + ZERO_KEYS_AFTER + secs(0.1);
    assert_eq!(tick(&mut a, t), Out::Done);
    assert!(a.pending.is_none() && a.timers.zero_at.is_none());
}

// ------------------------------------------------------------------ rotation and races

#[test]
fn key_rotation_keeps_previous_session_decrypting() {
    let Peers {
        mut a, mut b, t0, ..
    } = peers();
    establish(&mut a, &mut b, t0);
    let t1 = t0 + secs(130.0);
    let old_from_a = net(enc(&mut a, &ipv4(b"old a"), t1));
    let old_from_b = net(enc(&mut b, &ipv4(b"old b"), t1));
    let init = net(tick(&mut a, t1));
    assert_eq!(kind(&init), 1);
    let resp = net(dec(&mut b, &init, t1));
    // In flight on the old session while b waits for confirmation: still fine.
    assert!(matches!(dec(&mut b, &old_from_a, t1), Out::V4(..)));
    let conf = net(dec(&mut a, &resp, t1));
    assert_eq!(dec(&mut b, &conf, t1), Out::Done);
    // Both rotated; packets sent on the old session still decrypt (previous).
    assert!(matches!(dec(&mut a, &old_from_b, t1), Out::V4(..)));
    let new_from_a = net(enc(&mut a, &ipv4(b"new"), t1));
    assert_ne!(new_from_a[4..8], old_from_a[4..8], "new receiver index");
    assert!(matches!(dec(&mut b, &new_from_a, t1), Out::V4(..)));
    // A third rotation drops the oldest.
    let t2 = t1 + secs(130.0);
    let older = net(enc(&mut b, &ipv4(b"x"), t1));
    net(enc(&mut a, &ipv4(b"x"), t2));
    let init = net(tick(&mut a, t2));
    let resp = net(dec(&mut b, &init, t2));
    let conf = net(dec(&mut a, &resp, t2));
    dec(&mut b, &conf, t2);
    assert!(
        matches!(dec(&mut a, &older, t2), Out::V4(..)),
        "one rotation back is kept"
    );
    assert_eq!(dec(&mut a, &old_from_b, t2), Out::Err(WgError::NoSession));
}

#[test]
fn simultaneous_initiation_resolves_immediately() {
    let Peers {
        mut a, mut b, t0, ..
    } = peers();
    let init_a = net(enc(&mut a, &ipv4(b"from a"), t0));
    let init_b = net(enc(&mut b, &ipv4(b"from b"), t0));
    let resp_a = net(dec(&mut a, &init_b, t0));
    let resp_b = net(dec(&mut b, &init_a, t0));
    // Each side completes its own initiation and sends its queued packet.
    let data_a = net(dec(&mut a, &resp_b, t0));
    let data_b = net(dec(&mut b, &resp_a, t0));
    assert_eq!(
        dec(&mut b, &data_a, t0),
        Out::V4(ipv4(b"from a"), Ipv4Addr::new(10, 0, 0, 1))
    );
    assert_eq!(
        dec(&mut a, &data_b, t0),
        Out::V4(ipv4(b"from b"), Ipv4Addr::new(10, 0, 0, 1))
    );
    // And traffic keeps flowing both ways without further handshakes.
    for i in 0..3u8 {
        let t = t0 + secs(f64::from(i));
        let x = net(enc(&mut a, &ipv4(&[i]), t));
        assert!(matches!(dec(&mut b, &x, t), Out::V4(..)));
        let y = net(enc(&mut b, &ipv4(&[i]), t));
        assert!(matches!(dec(&mut a, &y, t), Out::V4(..)));
        assert!(!matches!(tick(&mut a, t), Out::Net(ref p) if kind(p) == 1));
        assert!(!matches!(tick(&mut b, t), Out::Net(ref p) if kind(p) == 1));
    }
}

#[test]
fn lost_confirmation_is_recovered() {
    // The initiator's keepalive is lost; the responder has only `next` and data to send.
    let Peers {
        mut a, mut b, t0, ..
    } = peers();
    let mut buf = [0u8; 256];
    let init = net(own(a.force_handshake(&mut buf, t0)));
    let resp = net(dec(&mut b, &init, t0));
    let _lost = net(dec(&mut a, &resp, t0));
    assert_eq!(enc(&mut b, &ipv4(b"b"), t0 + secs(1.0)), Out::Done);
    // After REKEY_TIMEOUT without confirmation, b starts its own handshake.
    let t = t0 + REKEY_TIMEOUT + secs(0.1);
    let init_b = net(tick(&mut b, t));
    assert_eq!(kind(&init_b), 1);
    let resp_a = net(dec(&mut a, &init_b, t));
    let data = net(dec(&mut b, &resp_a, t));
    assert_eq!(
        dec(&mut a, &data, t),
        Out::V4(ipv4(b"b"), Ipv4Addr::new(10, 0, 0, 1))
    );
}

#[test]
fn tunnel_is_send_and_responder_is_shared() {
    fn send<T: Send>() {}
    fn sync<T: Send + Sync>() {}
    send::<Tunnel>();
    sync::<Responder>();
}

// ------------------------------------------------------------------ fuzzing

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decapsulate_never_panics_on_junk(bytes in proptest::collection::vec(any::<u8>(), 0..300), ty in 1u8..=4, typed in any::<bool>()) {
        let Peers { mut a, mut b, t0, kb, .. } = peers();
        establish(&mut a, &mut b, t0);
        let mut d = bytes;
        if typed && d.len() >= 4 {
            d[0] = ty;
            d[1..4].fill(0);
        }
        let mut out = vec![0u8; 2048];
        let _ = a.decapsulate(Some(src()), &d, &mut out, t0);
        let _ = b.decapsulate(None, &d, &mut out, t0);
        let r = Responder::new(kb);
        for load in [false, true] {
            if let Ok(p) = r.verify_and_identify_at(src(), &d, load, &mut out, t0) {
                let _ = r.route(&p);
            }
        }
        let mut tiny = [0u8; 8];
        let _ = a.decapsulate(None, &d, &mut tiny, t0);
        let _ = r.verify_and_identify_at(src(), &d, true, &mut tiny, t0);
    }

    #[test]
    fn bit_flipped_messages_are_rejected(which in 0usize..3, pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let Peers { mut a, mut b, t0, .. } = peers();
        let init = net(enc(&mut a, &ipv4(b"payload"), t0));
        let flip = |m: &mut Vec<u8>| {
            let i = pos.index(m.len());
            m[i] ^= 1 << bit;
            i
        };
        let (i, len, r) = match which {
            0 => {
                let mut m = init.clone();
                let i = flip(&mut m);
                (i, m.len(), dec(&mut b, &m, t0))
            }
            1 => {
                let mut m = net(dec(&mut b, &init, t0));
                let i = flip(&mut m);
                (i, m.len(), dec(&mut a, &m, t0))
            }
            _ => {
                let resp = net(dec(&mut b, &init, t0));
                let mut m = net(dec(&mut a, &resp, t0));
                let i = flip(&mut m);
                (i, m.len(), dec(&mut b, &m, t0))
            }
        };
        // MAC2 is only checked under load (by the Responder), so flips there may pass.
        let in_mac2 = which < 2 && i >= len - 16;
        prop_assert!(in_mac2 || matches!(r, Out::Err(_)), "flip at {} accepted: {:?}", i, r);
    }
}
