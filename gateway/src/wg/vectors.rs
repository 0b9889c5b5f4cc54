//! Known-answer tests against vectors from an independent implementation
//! (`testdata/gen_vectors.py`: Python hashlib + `cryptography`, written from the whitepaper).
//! They pin the exact bytes on the wire: initiation, response, transport keys, data
//! messages, cookie reply and MAC2, with and without a pre-shared key.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Instant;

use x25519_dalek::StaticSecret;

use super::cookie::{make_cookie, write_cookie_reply, CookieState};
use super::crypto::tai64n;
use super::keys::Key;
use super::messages::{parse_packet, Packet};
use super::noise::{
    consume_response, create_initiation, create_response, decrypt_initiator_static,
    finish_initiation, LocalStatic, PeerStatic,
};
use super::session::Session;

pub(super) const SI: &str = "7a660f3a76e5189611224acb7d665909ee59be9d6a05e88994764c90b419164d";
pub(super) const SR: &str = "445ea69d9c4cde87ae2f11f751dcb0e934846cf3a38c28980a25cd8cf355e3ee";
pub(super) const EI: &str = "ea393b192fc90f9ca781853bb517e6ecdb4765ea1d2c9f869c9a8a5dc1c5dde5";
pub(super) const ER: &str = "7af4d70e01a0611e5c828fa291d7f152376bface59f12375ac133417562a4e67";
pub(super) const PSK: &str = "22c2212187020d63b13ca1c43fe2c235548035242ceedde7ca25ee0480995e2d";
pub(super) const INIT: &str = "01000000010c0b0a1fb22d22843e83c5616c4e80caa091331a66ff0e74573e68e084dd145172a45c887006ed4facd758cbf74d23d791a8ad13910525629a4a2f395835df13044854fefcb33ec767ea9ad23311fedd543bb4de2e7784d2c180914323df25cfcb5accd301957fb2670a9983135c3c96ef20041fd9dd830442f574c6287a3200000000000000000000000000000000";
pub(super) const RESP: &str = "0200000033221100010c0b0acfb82a4c40ec91c20e0c4c131a3bdb7933b30187945a5205f25d5faa6eb68e673e85acebc9402d77029ee69804cfae24a5633cf2836ead0603db9aac6c8ec2f500000000000000000000000000000000";
pub(super) const T_SEND_I: &str =
    "a8b62d492f7f4aa2e1e27c4926b6f9b8d5613d8669e3920a1e5a2c3dc5b348ed";
pub(super) const T_RECV_I: &str =
    "a2503c0177aac0de339bddb475bfca7456a26c4dd57a105b392483d93c671bad";
pub(super) const DATA_I: &str = "04000000332211000000000000000000df022f7451d373390a198fd18cc8ec7d9cd8e94375f8081775ee0b4e2df9009fb9b32ed395e6f8c0d01fefc27b119bb6";
pub(super) const KEEPALIVE_R: &str =
    "04000000010c0b0a000000000000000039de26ca997b2bf52a85d8c728db3f76";
pub(super) const PSK_INIT: &str = "01000000010c0b0a1fb22d22843e83c5616c4e80caa091331a66ff0e74573e68e084dd145172a45c887006ed4facd758cbf74d23d791a8ad13910525629a4a2f395835df13044854fefcb33ec767ea9ad23311fedd543bb4de2e7784d2c180914323df25cfcb5accd301957fb2670a9983135c3c96ef20041fd9dd830442f574c6287a3200000000000000000000000000000000";
pub(super) const PSK_RESP: &str = "0200000033221100010c0b0acfb82a4c40ec91c20e0c4c131a3bdb7933b30187945a5205f25d5faa6eb68e6745384ba1fecc7d31e5877567265aed14368bf07105b7891a7e6145254d4ff79400000000000000000000000000000000";
pub(super) const PSK_T_SEND_I: &str =
    "8bfc7aa55ed2660aee7a8b73f49adbc182b3457a7a2312823be7feea2ad81fe0";
pub(super) const PSK_T_RECV_I: &str =
    "9ef451e6437d728dfb9cd9bf1e694f0ccf844e639e78477c348791f09f4ca2bd";
pub(super) const PSK_DATA_I: &str = "0400000033221100000000000000000039ebb94648157de49209f885f4e662888c9de476403d8d0b5068f60eb6eec642a26507a3557802f0d59a4cd96839e1b7";
pub(super) const PSK_KEEPALIVE_R: &str =
    "04000000010c0b0a00000000000000001f5ea186cdca022d55f10d44a87bf611";
pub(super) const COOKIE_SECRET: &str =
    "700313011d0817c94ea498f961b090261634266780fde2b328fed57f0e95ead4";
pub(super) const COOKIE_TAU: &str = "b653887c823ba66522ab5b671359922f";
pub(super) const COOKIE_REPLY: &str = "03000000010c0b0a000102030405060708090a0b0c0d0e0f10111213141516174be26ca7e46ec9ef28e94479e09f3e68f08a75b750db11d27faccf725960280e";
pub(super) const COOKIE_MAC2: &str = "f67cc1440fbf9097fe43302f45a08727";

fn b32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

struct Vectors {
    psk: [u8; 32],
    init: &'static str,
    resp: &'static str,
    t_send_i: &'static str,
    t_recv_i: &'static str,
    data_i: &'static str,
    keepalive_r: &'static str,
}

fn check_handshake(v: &Vectors) {
    let now = Instant::now();
    let si = Key::from_bytes(b32(SI));
    let sr = Key::from_bytes(b32(SR));
    let (li, lr) = (LocalStatic::new(&si), LocalStatic::new(&sr));
    let (peer_of_i, peer_of_r) = (
        PeerStatic::new(&li, sr.public_key()),
        PeerStatic::new(&lr, si.public_key()),
    );
    let ts = tai64n(1_700_000_000, 0x0700_0000);

    // Initiator: the initiation, byte for byte (MAC2 zero: no cookie).
    let mut init = [0u8; 148];
    let state = create_initiation(
        &li,
        &peer_of_i,
        0x0a0b_0c01,
        StaticSecret::from(b32(EI)),
        &ts,
        &mut init,
    )
    .unwrap();
    CookieState::default().stamp(&peer_of_i.mac1_key, &mut init, now);
    assert_eq!(hex::encode(init), v.init);

    // Responder: consumes it, answers byte for byte.
    let Ok(Packet::HandshakeInit(m)) = parse_packet(&init) else {
        panic!()
    };
    let half = decrypt_initiator_static(&lr, &m).unwrap();
    assert_eq!(half.peer_static, si.public_key());
    let consumed = finish_initiation(half, &peer_of_r, &m).unwrap();
    assert_eq!(consumed.timestamp, ts);
    let mut resp = [0u8; 92];
    let keys_r = create_response(
        &consumed,
        &peer_of_r,
        0x0011_2233,
        StaticSecret::from(b32(ER)),
        &v.psk,
        &mut resp,
    )
    .unwrap();
    CookieState::default().stamp(&peer_of_r.mac1_key, &mut resp, now);
    assert_eq!(hex::encode(resp), v.resp);
    assert_eq!(hex::encode(keys_r.recv), v.t_send_i);
    assert_eq!(hex::encode(keys_r.send), v.t_recv_i);

    // Initiator: consumes the response, derives the same keys.
    let Ok(Packet::HandshakeResponse(r)) = parse_packet(&resp) else {
        panic!()
    };
    let keys_i = consume_response(&state, &li, &r, &v.psk).unwrap();
    assert_eq!(hex::encode(keys_i.send), v.t_send_i);
    assert_eq!(hex::encode(keys_i.recv), v.t_recv_i);
    assert_eq!(keys_i.remote_index, 0x0011_2233);

    // Transport: the first data message each way.
    let mut si_sess = Session::new(0x0a0b_0c01, &keys_i, true, now);
    let mut sr_sess = Session::new(0x0011_2233, &keys_r, false, now);
    let mut ip = hex::decode("4500001900000000401100000a0000010a000002").unwrap();
    ip.extend_from_slice(b"hello");
    let mut out = [0u8; 128];
    let n = si_sess.encrypt(&ip, &mut out).unwrap();
    assert_eq!(hex::encode(&out[..n]), v.data_i);
    let n = sr_sess.encrypt(&[], &mut out).unwrap();
    assert_eq!(hex::encode(&out[..n]), v.keepalive_r);
    let data = hex::decode(v.data_i).unwrap();
    let Ok(Packet::Data(d)) = parse_packet(&data) else {
        panic!()
    };
    let plain = sr_sess.decrypt(&d, &mut out).unwrap();
    assert_eq!(&plain[..ip.len()], &ip[..]);
    assert!(plain[ip.len()..].iter().all(|&b| b == 0));
}

#[test]
fn handshake_and_transport_without_psk() {
    check_handshake(&Vectors {
        psk: [0; 32],
        init: INIT,
        resp: RESP,
        t_send_i: T_SEND_I,
        t_recv_i: T_RECV_I,
        data_i: DATA_I,
        keepalive_r: KEEPALIVE_R,
    });
}

#[test]
fn handshake_and_transport_with_psk() {
    assert_eq!(PSK_INIT, INIT, "the PSK only enters in the response");
    check_handshake(&Vectors {
        psk: b32(PSK),
        init: PSK_INIT,
        resp: PSK_RESP,
        t_send_i: PSK_T_SEND_I,
        t_recv_i: PSK_T_RECV_I,
        data_i: PSK_DATA_I,
        keepalive_r: PSK_KEEPALIVE_R,
    });
}

#[test]
fn cookie_reply_and_mac2() {
    let now = Instant::now();
    let src: SocketAddr = "192.0.2.1:51820".parse().unwrap();
    let mut tau = make_cookie(&b32(COOKIE_SECRET), src);
    assert_eq!(hex::encode(tau), COOKIE_TAU);
    // The same address as an IPv4-mapped IPv6 socket address gives the same cookie.
    assert_eq!(
        make_cookie(
            &b32(COOKIE_SECRET),
            "[::ffff:192.0.2.1]:51820".parse().unwrap()
        ),
        tau
    );

    let sr = Key::from_bytes(b32(SR));
    let si = Key::from_bytes(b32(SI));
    let init = hex::decode(INIT).unwrap();
    let mac1: [u8; 16] = init[116..132].try_into().unwrap();
    let mut reply = [0u8; 64];
    let nonce: [u8; 24] = core::array::from_fn(|i| i as u8);
    write_cookie_reply(
        &mut reply,
        &super::cookie::cookie_key(&sr.public_key()),
        0x0a0b_0c01,
        &nonce,
        &mut tau,
        &mac1,
    );
    assert_eq!(hex::encode(reply), COOKIE_REPLY);

    // The initiator accepts it (it sent that MAC1) and stamps MAC2 on the same initiation.
    let li = LocalStatic::new(&si);
    let peer = PeerStatic::new(&li, sr.public_key());
    let mut jar = CookieState::default();
    let mut msg: [u8; 148] = init.clone().try_into().unwrap();
    jar.stamp(&peer.mac1_key, &mut msg, now);
    assert_eq!(&msg[..], &init[..], "no cookie yet: MAC2 is zero");
    let Ok(Packet::CookieReply(c)) = parse_packet(&reply) else {
        panic!()
    };
    jar.consume_reply(&peer.cookie_key, &c, now).unwrap();
    assert!(jar.has_fresh_cookie(now));
    jar.stamp(&peer.mac1_key, &mut msg, now);
    assert_eq!(hex::encode(&msg[132..]), COOKIE_MAC2);
    assert_eq!(&msg[..132], &init[..132]);
}
