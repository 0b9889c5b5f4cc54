//! The peer relay on loopback: allocation, the bind challenge, forwarding both ways, and
//! what it refuses (strangers, nodes outside the tailnet, junk).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use rand_core::OsRng;
use tokio::net::UdpSocket;
use x25519_dalek::{PublicKey, StaticSecret};

use super::server::PeerRelayServer;
use crate::traversal::disco::{self, Message};

struct Node {
    key: StaticSecret,
    public: [u8; 32],
    sock: UdpSocket,
}

impl Node {
    async fn new() -> Node {
        let key = StaticSecret::random_from_rng(OsRng);
        let public = PublicKey::from(&key).to_bytes();
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        Node { key, public, sock }
    }

    async fn send(&self, to: SocketAddr, relay: &[u8; 32], msg: &Message) {
        let d = disco::seal(&self.key, relay, msg).unwrap();
        self.sock.send_to(&d, to).await.unwrap();
    }

    async fn recv(&self) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = vec![0u8; 2048];
        let r = tokio::time::timeout(Duration::from_millis(500), self.sock.recv_from(&mut buf));
        let (n, from) = r.await.ok()?.ok()?;
        buf.truncate(n);
        Some((buf, from))
    }

    async fn recv_msg(&self) -> Option<(Message, SocketAddr)> {
        let (d, from) = self.recv().await?;
        disco::open(&self.key, &d).ok().map(|(_, m)| (m, from))
    }

    /// Allocates a session with `peer` and binds to it; returns the session address.
    async fn join(&self, relay_addr: SocketAddr, relay: &[u8; 32], peer: &[u8; 32]) -> SocketAddr {
        self.send(relay_addr, relay, &Message::RelayAllocate { peer: *peer })
            .await;
        let Some((Message::RelayAllocated { peer: p, port }, _)) = self.recv_msg().await else {
            panic!("no allocation")
        };
        assert_eq!(&p, peer);
        let session = SocketAddr::new(relay_addr.ip(), port);
        self.send(session, relay, &Message::RelayBind { cookie: None })
            .await;
        let Some((Message::RelayChallenge { cookie }, from)) = self.recv_msg().await else {
            panic!("no challenge")
        };
        assert_eq!(from, session);
        self.send(
            session,
            relay,
            &Message::RelayBind {
                cookie: Some(cookie),
            },
        )
        .await;
        assert_eq!(
            self.recv_msg().await.map(|(m, _)| m),
            Some(Message::RelayBound)
        );
        session
    }
}

#[tokio::test]
async fn two_nodes_meet_through_a_session_and_nobody_else_gets_in() {
    let relay_key = StaticSecret::random_from_rng(OsRng);
    let relay_pub = PublicKey::from(&relay_key).to_bytes();
    let (a, b, outsider) = (Node::new().await, Node::new().await, Node::new().await);
    let members = [a.public, b.public];
    let server = PeerRelayServer::start(0, 4, relay_key, Box::new(move |k| members.contains(k)))
        .await
        .unwrap();
    let relay_addr: SocketAddr = ([127, 0, 0, 1], server.port()).into();

    // Both sides ask; they get the same session.
    let sa = a.join(relay_addr, &relay_pub, &b.public).await;
    let sb = b.join(relay_addr, &relay_pub, &a.public).await;
    assert_eq!(sa, sb);
    assert_eq!(server.status().sessions, 1);

    // Datagrams pass unchanged both ways.
    a.sock
        .send_to(b"\x04\0\0\0 wireguard a->b", sa)
        .await
        .unwrap();
    assert_eq!(
        b.recv().await,
        Some((b"\x04\0\0\0 wireguard a->b".to_vec(), sa))
    );
    b.sock
        .send_to(b"\x04\0\0\0 wireguard b->a", sb)
        .await
        .unwrap();
    assert_eq!(
        a.recv().await,
        Some((b"\x04\0\0\0 wireguard b->a".to_vec(), sa))
    );
    assert_eq!(server.counters().forwarded_packets.load(Relaxed), 2);

    // A node outside the tailnet gets no session; junk and strangers are counted drops.
    outsider
        .send(
            relay_addr,
            &relay_pub,
            &Message::RelayAllocate { peer: a.public },
        )
        .await;
    assert!(outsider.recv().await.is_none());
    assert_eq!(server.counters().refused.load(Relaxed), 1);
    outsider.sock.send_to(b"junk", relay_addr).await.unwrap();
    outsider
        .sock
        .send_to(b"\x04\0\0\0 inject", sa)
        .await
        .unwrap();
    // An outsider replaying a member's sealed bind from its own address gets a challenge
    // it cannot answer: the cookie is for its address and the seal needs the member's key.
    let replay = disco::seal(&a.key, &relay_pub, &Message::RelayBind { cookie: None }).unwrap();
    outsider.sock.send_to(&replay, sa).await.unwrap();
    assert!(
        outsider.recv().await.is_some(),
        "a sealed challenge (for a, unreadable)"
    );
    assert!(
        b.recv().await.is_none(),
        "nothing from the outsider reached b"
    );
    // Its own sealed bind is refused before any key agreement: it is not a member.
    outsider
        .send(sa, &relay_pub, &Message::RelayBind { cookie: None })
        .await;
    assert!(outsider.recv().await.is_none());
    let c = server.counters();
    assert_eq!(c.refused.load(Relaxed), 2);
    assert_eq!(c.dropped_junk.load(Relaxed), 2);
    assert_eq!(c.forwarded_packets.load(Relaxed), 2);
}

#[tokio::test]
async fn an_idle_session_closes_and_frees_its_port() {
    let relay_key = StaticSecret::random_from_rng(OsRng);
    let relay_pub = PublicKey::from(&relay_key).to_bytes();
    let (a, b) = (Node::new().await, Node::new().await);
    let server = PeerRelayServer::start_with_idle(
        0,
        1,
        relay_key,
        Box::new(|_| true),
        Duration::from_millis(300),
    )
    .await
    .unwrap();
    let relay_addr: SocketAddr = ([127, 0, 0, 1], server.port()).into();
    let session = a.join(relay_addr, &relay_pub, &b.public).await;
    assert_eq!(server.status().sessions, 1);
    // b never binds; datagrams that are not forwarded (a's, junk) do not keep it open.
    for _ in 0..40 {
        if server.status().sessions == 0 {
            break;
        }
        a.sock
            .send_to(b"\x04\0\0\0 unbound", session)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.status().sessions, 0, "the idle session was closed");
    // The one session port is free for the next pair.
    a.join(relay_addr, &relay_pub, &[7; 32]).await;
}

#[tokio::test]
async fn a_burst_sent_with_gso_reaches_the_partner_as_the_same_datagrams() {
    use std::os::fd::AsRawFd;

    use crate::io::udp_offload::send_segments;

    let relay_key = StaticSecret::random_from_rng(OsRng);
    let relay_pub = PublicKey::from(&relay_key).to_bytes();
    let (a, b) = (Node::new().await, Node::new().await);
    let members = [a.public, b.public];
    let server = PeerRelayServer::start(0, 4, relay_key, Box::new(move |k| members.contains(k)))
        .await
        .unwrap();
    let relay_addr: SocketAddr = ([127, 0, 0, 1], server.port()).into();
    let session = a.join(relay_addr, &relay_pub, &b.public).await;
    b.join(relay_addr, &relay_pub, &a.public).await;

    // Twenty 120-byte datagrams and a short one in one GSO send: the relay may read them as
    // one GRO run; b gets them one by one, unchanged and in order.
    let burst: Vec<u8> = (0..2430u32).map(|i| (i / 120) as u8).collect();
    let to = socket2::SockAddr::from(session);
    send_segments(a.sock.as_raw_fd(), &burst, 120, &to).unwrap();
    for k in 0..20u8 {
        assert_eq!(
            b.recv().await.map(|(d, _)| d),
            Some(vec![k; 120]),
            "datagram {k}"
        );
    }
    assert_eq!(b.recv().await.map(|(d, _)| d), Some(vec![20u8; 30]));
    let c = server.counters();
    assert_eq!(c.forwarded_packets.load(Relaxed), 21);
    assert_eq!(c.forwarded_bytes.load(Relaxed), 2430);
}
