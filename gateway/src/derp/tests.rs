//! The relay server and client end to end on loopback: relaying, "not here" notices, key
//! proof, a replaced connection, the mesh of two servers, pacing, and junk at the port.

use std::net::SocketAddr;
use std::time::Duration;

use rand_core::OsRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use x25519_dalek::{PublicKey, StaticSecret};

use super::client::{self, Client, ConnectOptions, Received};
use super::frame::{Frame, GoneReason, NodeKey};
use super::server::{Server, ServerOptions, DEFAULT_QUEUE_DEPTH};
use super::tls::{self, ServerCert, Verification};
use crate::test_util::TempDir;

const WAIT: Duration = Duration::from_secs(5);

/// A relay server on a loopback port, stopped on drop.
struct TestRelay {
    server: Server,
    addr: SocketAddr,
    fingerprint: Option<String>,
    task: JoinHandle<()>,
    _dir: TempDir,
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(tls: bool, mesh_key: Option<&str>, rate_limit: Option<(u64, u64)>) -> TestRelay {
    let dir = TempDir::new("relay");
    let server = Server::new(ServerOptions {
        private_key: StaticSecret::random_from_rng(OsRng),
        mesh_key: mesh_key.map(str::to_string),
        rate_limit,
        queue_depth: DEFAULT_QUEUE_DEPTH,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (acceptor, fingerprint) = if tls {
        let cert = ServerCert::self_signed(dir.path(), "relay.test").unwrap();
        let fp = cert.fingerprint();
        (
            Some(TlsAcceptor::from(tls::server_config(cert).unwrap())),
            Some(fp),
        )
    } else {
        (None, None)
    };
    let task = tokio::spawn(server.clone().serve(listener, acceptor));
    TestRelay {
        server,
        addr,
        fingerprint,
        task,
        _dir: dir,
    }
}

impl TestRelay {
    fn options(&self) -> ConnectOptions {
        let mut o = ConnectOptions::new("relay.test", self.addr, Verification::Insecure);
        o.tls = self
            .fingerprint
            .as_ref()
            .map(|fp| Verification::Pinned(fp.clone()));
        o
    }

    async fn client(&self) -> (StaticSecret, NodeKey, Client) {
        let key = StaticSecret::random_from_rng(OsRng);
        let public = PublicKey::from(&key).to_bytes();
        let c = client::connect(&self.options(), &key).await.unwrap();
        (key, public, c)
    }
}

async fn next(c: &mut Client) -> Received {
    tokio::time::timeout(WAIT, c.receiver.recv())
        .await
        .expect("a frame within 5 s")
        .expect("the connection is up")
}

/// Polls `cond` every 10 ms for up to 5 s.
async fn eventually(mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 5 s");
}

#[tokio::test]
async fn relays_packets_between_two_clients_over_tls() {
    let r = relay(true, None, None).await;
    let (_, a_pub, mut a) = r.client().await;
    let (_, b_pub, mut b) = r.client().await;
    assert_eq!(a.server_key, *r.server.public_key().as_bytes());
    eventually(|| r.server.snapshot().clients == 2).await;
    a.sender.send(b_pub, b"hello b".to_vec()).await.unwrap();
    assert_eq!(
        next(&mut b).await,
        Received::Packet {
            src: a_pub,
            data: b"hello b".to_vec()
        }
    );
    b.sender.send(a_pub, vec![7; 1400]).await.unwrap();
    assert_eq!(
        next(&mut a).await,
        Received::Packet {
            src: b_pub,
            data: vec![7; 1400]
        }
    );
    a.sender.ping(*b"pingpong").await.unwrap();
    assert_eq!(next(&mut a).await, Received::Pong(*b"pingpong"));
    let s = r.server.snapshot();
    assert_eq!((s.packets_relayed, s.bytes_relayed), (2, 1407));
}

#[tokio::test]
async fn unknown_destinations_get_one_not_here_notice_per_second() {
    let r = relay(false, None, None).await;
    let (_, _, mut a) = r.client().await;
    let nobody = [9u8; 32];
    for _ in 0..5 {
        a.sender.send(nobody, vec![1]).await.unwrap();
    }
    assert_eq!(
        next(&mut a).await,
        Received::PeerGone {
            key: nobody,
            reason: GoneReason::NotHere
        }
    );
    eventually(|| r.server.snapshot().dropped_unknown_dest == 5).await;
    // No second notice for the same destination within the interval.
    a.sender.ping([0; 8]).await.unwrap();
    assert_eq!(next(&mut a).await, Received::Pong([0; 8]));
}

#[tokio::test]
async fn wrong_pins_and_server_keys_are_refused() {
    let r = relay(true, None, None).await;
    let key = StaticSecret::random_from_rng(OsRng);
    let mut o = r.options();
    o.tls = Some(Verification::Pinned("00".repeat(32)));
    let e = client::connect(&o, &key).await.err().unwrap();
    assert!(format!("{e:#}").contains("is not the pinned"), "{e:#}");
    let mut o = r.options();
    o.expect_server_key = Some([3; 32]);
    let e = client::connect(&o, &key).await.err().unwrap();
    assert!(
        format!("{e:#}").contains("not the one in the relay map"),
        "{e:#}"
    );
}

/// A raw connection that completes the upgrade and reads the server key frame.
async fn raw_upgraded(addr: SocketAddr) -> (TcpStream, NodeKey, [u8; 32]) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(super::http::upgrade_request("relay.test").as_bytes())
        .await
        .unwrap();
    let mut r = tokio::io::BufReader::new(&mut s);
    let head = super::http::read_head(&mut r).await.unwrap();
    assert!(super::http::is_upgrade_response(&head));
    let mut buf = Vec::new();
    let Frame::ServerKey { key, challenge } =
        super::conn::read_frame(&mut r, &mut buf).await.unwrap()
    else {
        panic!("expected the server key")
    };
    (s, key, challenge)
}

#[tokio::test]
async fn a_client_cannot_claim_a_key_it_does_not_hold() {
    let r = relay(false, None, None).await;
    let (_, victim_pub, _victim) = r.client().await;
    let (mut s, server_key, challenge) = raw_upgraded(r.addr).await;
    // Sealed with our own key, but claiming the victim's.
    let ours = StaticSecret::random_from_rng(OsRng);
    let (nonce, sealed) =
        super::auth::seal_client_info(&ours, &server_key, &challenge, &Default::default()).unwrap();
    let mut out = Vec::new();
    Frame::ClientInfo {
        key: victim_pub,
        nonce,
        sealed,
    }
    .encode(&mut out);
    s.write_all(&out).await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the server closes without a server info");
    assert_eq!(r.server.snapshot().handshake_failures, 1);
    assert_eq!(r.server.snapshot().clients, 1);
}

#[tokio::test]
async fn a_second_connection_with_the_same_key_replaces_the_first() {
    let r = relay(false, None, None).await;
    let (a_key, a_pub, mut a1) = r.client().await;
    let mut a2 = client::connect(&r.options(), &a_key).await.unwrap();
    let end = tokio::time::timeout(WAIT, a1.receiver.recv())
        .await
        .unwrap();
    assert!(end.is_err(), "the first connection is closed: {end:?}");
    let (_, b_pub, b) = r.client().await;
    b.sender.send(a_pub, vec![5]).await.unwrap();
    assert_eq!(
        next(&mut a2).await,
        Received::Packet {
            src: b_pub,
            data: vec![5]
        }
    );
    assert_eq!(r.server.snapshot().clients, 2);
}

#[tokio::test]
async fn servers_of_a_region_forward_over_their_mesh() {
    let s1 = relay(true, Some("region-secret"), None).await;
    let s2 = relay(true, Some("region-secret"), None).await;
    let l1 = super::mesh::spawn_link(s1.server.clone(), s2.options());
    let l2 = super::mesh::spawn_link(s2.server.clone(), s1.options());
    let (_, a_pub, mut a) = s1.client().await;
    let (_, b_pub, mut b) = s2.client().await;
    eventually(|| s1.server.snapshot().mesh_keys == 1 && s2.server.snapshot().mesh_keys == 1).await;
    a.sender.send(b_pub, b"via mesh".to_vec()).await.unwrap();
    assert_eq!(
        next(&mut b).await,
        Received::Packet {
            src: a_pub,
            data: b"via mesh".to_vec()
        }
    );
    b.sender.send(a_pub, b"back".to_vec()).await.unwrap();
    assert_eq!(
        next(&mut a).await,
        Received::Packet {
            src: b_pub,
            data: b"back".to_vec()
        }
    );
    assert_eq!(s1.server.snapshot().packets_to_mesh, 1);
    assert_eq!(s2.server.snapshot().packets_from_mesh, 1);
    // b leaves: s1 forgets it.
    drop(b);
    eventually(|| s1.server.snapshot().mesh_keys == 0).await;
    l1.abort();
    l2.abort();
}

#[tokio::test]
async fn a_wrong_mesh_key_is_refused_and_non_mesh_forwards_are_dropped() {
    let r = relay(false, Some("right"), None).await;
    let mut o = r.options();
    o.mesh_key = Some("wrong".into());
    let e = client::connect(&o, &StaticSecret::random_from_rng(OsRng))
        .await
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("wrong mesh key"), "{e:#}");
    // A plain client may not forward as if it were a server.
    let (_, _, a) = r.client().await;
    let (_, b_pub, _b) = r.client().await;
    a.sender
        .frame(Frame::ForwardPacket {
            src: [1; 32],
            dst: b_pub,
            packet: vec![1],
        })
        .await
        .unwrap();
    eventually(|| r.server.snapshot().dropped_not_mesh == 1).await;
    assert_eq!(r.server.snapshot().packets_relayed, 0);
}

#[tokio::test]
async fn clients_over_their_rate_are_paced_not_dropped() {
    let r = relay(false, None, Some((200_000, 0))).await;
    let (_, _, a) = r.client().await;
    let (_, b_pub, mut b) = r.client().await;
    assert_eq!(a.server_info.rate_limit_bytes_per_sec, 200_000);
    for _ in 0..100 {
        a.sender.send(b_pub, vec![0; 1000]).await.unwrap();
    }
    for _ in 0..100 {
        assert!(matches!(next(&mut b).await, Received::Packet { .. }));
    }
    let s = r.server.snapshot();
    assert!(s.rate_limited > 0, "{s:?}");
    assert_eq!(s.dropped_queue_full, 0);
}

#[tokio::test]
async fn junk_at_the_port_is_counted_and_the_server_keeps_serving() {
    let r = relay(false, None, None).await;
    // Not HTTP at all, an unknown path, a probe, and an upgraded connection that sends an
    // oversized frame header.
    for junk in [
        &b"\x16\x03\x01\x00\xff garbage\r\n\r\n"[..],
        b"GET /nope HTTP/1.1\r\n\r\n",
        b"GET /derp/probe HTTP/1.1\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        s.write_all(junk).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut answer)).await;
    }
    let (mut s, _, _) = raw_upgraded(r.addr).await;
    s.write_all(&[0x02, 0xff, 0xff, 0xff, 0xff]).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await;
    eventually(|| r.server.snapshot().handshake_failures >= 1).await;
    let s = r.server.snapshot();
    assert_eq!(s.http_requests, 2, "{s:?}");
    // Still serving.
    let (_, _, mut a) = r.client().await;
    a.sender.ping([1; 8]).await.unwrap();
    assert_eq!(next(&mut a).await, Received::Pong([1; 8]));
}
