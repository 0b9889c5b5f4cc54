//! The discovery protocol peers use to find and keep a direct path: small messages sent over
//! the WireGuard UDP socket (to candidate addresses) or through the relay, sealed so that only
//! the two peers can make or read them.
//!
//! A message is the 6-byte [`MAGIC`], the sender's node key, a 24-byte nonce, and the sealed
//! body (XChaCha20-Poly1305 under a key derived from the Curve25519 secret of the two node
//! keys and the sender's key, so each direction has its own key). Bodies:
//! - `Ping { tx }`: "answer me at the address this came from";
//! - `Pong { tx, observed }`: the answer, with the address the ping came from (how the pinger
//!   looks from here, e.g. its public NAT mapping);
//! - `CallMeMaybe { endpoints }`: sent through the relay: "I am pinging you at your
//!   endpoints; ping me at mine", so that both NATs open at the same time.
//! - peer relays (see [`crate::peer_relay`]): `RelayAllocate`/`RelayAllocated` between a node
//!   and a peer relay, `RelayBind`/`RelayChallenge`/`RelayBound` between a node and one relay
//!   session's port, and `CallMeMaybeVia` through the relay: "reach me through this session".
//!
//! WireGuard messages start with a type byte 1..=4 followed by three zero bytes, so the magic
//! never collides with them.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use rand_core::{OsRng, RngCore};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::wg::crypto::{hash, xaead_open, xaead_seal};

/// First bytes of every discovery message.
pub const MAGIC: [u8; 6] = *b"TGdsc1";
/// Bytes before the sealed body: magic, sender key, nonce.
pub const HEADER_LEN: usize = MAGIC.len() + 32 + 24;
/// Length of a transaction id.
pub const TX_LEN: usize = 12;
/// Most endpoints a call-me-maybe carries.
pub const MAX_ENDPOINTS: usize = 16;
/// Bytes of an encoded address (IPv6 or v4-mapped, port).
const ADDR_LEN: usize = 18;
/// Length of a peer relay's bind cookie.
pub const COOKIE_LEN: usize = 16;

/// A peer relay's proof that a bind came from the address it names.
pub type Cookie = [u8; COOKIE_LEN];

/// A transaction id matching a pong to its ping.
pub type TxId = [u8; TX_LEN];

/// A discovery message body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Please answer.
    Ping {
        /// Echoed in the pong.
        tx: TxId,
    },
    /// The answer to a ping.
    Pong {
        /// The ping's id.
        tx: TxId,
        /// Where the ping came from, as the answering peer saw it.
        observed: SocketAddr,
    },
    /// "Ping me at these addresses" (sent through the relay).
    CallMeMaybe {
        /// The sender's candidate addresses.
        endpoints: Vec<SocketAddr>,
    },
    /// To a peer relay: "give me a session with this peer".
    RelayAllocate {
        /// The other node's key.
        peer: [u8; 32],
    },
    /// From a peer relay: the session with `peer` is at UDP `port` of the address the
    /// allocation was sent to.
    RelayAllocated {
        /// The other node's key.
        peer: [u8; 32],
        /// The session's port.
        port: u16,
    },
    /// To a session's port: bind the address this comes from (with the cookie of a
    /// challenge), or ask for a challenge (without).
    RelayBind {
        /// The cookie from [`Message::RelayChallenge`].
        cookie: Option<Cookie>,
    },
    /// From a session's port: send this cookie back in a bind from the same address.
    RelayChallenge {
        /// Proves the address on the next bind.
        cookie: Cookie,
    },
    /// From a session's port: the address is bound.
    RelayBound,
    /// Through the relay: "reach me through the peer relay `relay` at `addr`".
    CallMeMaybeVia {
        /// The peer relay node's key.
        relay: [u8; 32],
        /// The session's address (the relay node's IP and the session port).
        addr: SocketAddr,
    },
}

/// Why a datagram is not a discovery message we can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoError {
    /// It does not start with the magic, or is too short.
    #[error("not a discovery message")]
    NotDisco,
    /// The seal does not open (forged, damaged, or from another key).
    #[error("discovery message does not authenticate")]
    BadSeal,
    /// It opened but the body is malformed.
    #[error("malformed discovery body")]
    BadBody,
    /// The sender's key gives no shared secret.
    #[error("weak sender key")]
    WeakKey,
}

/// Whether a datagram is a discovery message (by its magic).
pub fn is_disco(datagram: &[u8]) -> bool {
    datagram.len() > HEADER_LEN && datagram.starts_with(&MAGIC)
}

/// A fresh random transaction id.
pub fn new_tx() -> TxId {
    let mut tx = [0u8; TX_LEN];
    OsRng.fill_bytes(&mut tx);
    tx
}

fn put_addr(out: &mut Vec<u8>, a: SocketAddr) {
    let ip = match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out.extend_from_slice(&ip.octets());
    out.extend_from_slice(&a.port().to_be_bytes());
}

fn get_addr(b: &[u8]) -> SocketAddr {
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&b[..16]);
    let ip = Ipv6Addr::from(ip);
    let ip = match ip.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(ip),
    };
    SocketAddr::new(ip, u16::from_be_bytes([b[16], b[17]]))
}

impl Message {
    fn encode_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + TX_LEN + ADDR_LEN);
        match self {
            Message::Ping { tx } => {
                out.push(1);
                out.extend_from_slice(tx);
            }
            Message::Pong { tx, observed } => {
                out.push(2);
                out.extend_from_slice(tx);
                put_addr(&mut out, *observed);
            }
            Message::CallMeMaybe { endpoints } => {
                out.push(3);
                for e in endpoints.iter().take(MAX_ENDPOINTS) {
                    put_addr(&mut out, *e);
                }
            }
            Message::RelayAllocate { peer } => {
                out.push(4);
                out.extend_from_slice(peer);
            }
            Message::RelayAllocated { peer, port } => {
                out.push(5);
                out.extend_from_slice(peer);
                out.extend_from_slice(&port.to_be_bytes());
            }
            Message::RelayBind { cookie } => {
                out.push(6);
                if let Some(c) = cookie {
                    out.extend_from_slice(c);
                }
            }
            Message::RelayChallenge { cookie } => {
                out.push(7);
                out.extend_from_slice(cookie);
            }
            Message::RelayBound => out.push(8),
            Message::CallMeMaybeVia { relay, addr } => {
                out.push(9);
                out.extend_from_slice(relay);
                put_addr(&mut out, *addr);
            }
        }
        out
    }

    fn decode_body(b: &[u8]) -> Result<Message, DiscoError> {
        let (&kind, rest) = b.split_first().ok_or(DiscoError::BadBody)?;
        let tx = |r: &[u8]| -> TxId {
            let mut t = [0u8; TX_LEN];
            t.copy_from_slice(&r[..TX_LEN]);
            t
        };
        let key = |r: &[u8]| -> [u8; 32] {
            let mut k = [0u8; 32];
            k.copy_from_slice(&r[..32]);
            k
        };
        let cookie = |r: &[u8]| -> Cookie {
            let mut c = [0u8; COOKIE_LEN];
            c.copy_from_slice(&r[..COOKIE_LEN]);
            c
        };
        match kind {
            1 if rest.len() == TX_LEN => Ok(Message::Ping { tx: tx(rest) }),
            2 if rest.len() == TX_LEN + ADDR_LEN => Ok(Message::Pong {
                tx: tx(rest),
                observed: get_addr(&rest[TX_LEN..]),
            }),
            3 if rest.len() % ADDR_LEN == 0 && rest.len() / ADDR_LEN <= MAX_ENDPOINTS => {
                Ok(Message::CallMeMaybe {
                    endpoints: rest.chunks(ADDR_LEN).map(get_addr).collect(),
                })
            }
            4 if rest.len() == 32 => Ok(Message::RelayAllocate { peer: key(rest) }),
            5 if rest.len() == 34 => Ok(Message::RelayAllocated {
                peer: key(rest),
                port: u16::from_be_bytes([rest[32], rest[33]]),
            }),
            6 if rest.is_empty() => Ok(Message::RelayBind { cookie: None }),
            6 if rest.len() == COOKIE_LEN => Ok(Message::RelayBind {
                cookie: Some(cookie(rest)),
            }),
            7 if rest.len() == COOKIE_LEN => Ok(Message::RelayChallenge {
                cookie: cookie(rest),
            }),
            8 if rest.is_empty() => Ok(Message::RelayBound),
            9 if rest.len() == 32 + ADDR_LEN => Ok(Message::CallMeMaybeVia {
                relay: key(rest),
                addr: get_addr(&rest[32..]),
            }),
            _ => Err(DiscoError::BadBody),
        }
    }
}

/// The sealing key for messages from `sender` to `receiver`, given our secret and the other
/// side's public key.
fn direction_key(
    own: &StaticSecret,
    other: &[u8; 32],
    sender: &[u8; 32],
) -> Result<[u8; 32], DiscoError> {
    let shared = own.diffie_hellman(&PublicKey::from(*other));
    if !shared.was_contributory() {
        return Err(DiscoError::WeakKey);
    }
    Ok(hash(&[b"tailgate disco v1", shared.as_bytes(), sender]))
}

/// Seals `msg` from us (`own`) to the peer `to`.
pub fn seal(own: &StaticSecret, to: &[u8; 32], msg: &Message) -> Result<Vec<u8>, DiscoError> {
    let me = PublicKey::from(own).to_bytes();
    let key = direction_key(own, to, &me)?;
    let mut nonce = [0u8; 24];
    OsRng.fill_bytes(&mut nonce);
    let mut body = msg.encode_body();
    let tag = xaead_seal(&key, &nonce, &mut body, &MAGIC);
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + 16);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&me);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// The sender key of a discovery datagram (unauthenticated: use it to find the peer, then
/// [`open`]).
pub fn sender(datagram: &[u8]) -> Result<[u8; 32], DiscoError> {
    if !is_disco(datagram) {
        return Err(DiscoError::NotDisco);
    }
    let mut k = [0u8; 32];
    k.copy_from_slice(&datagram[MAGIC.len()..MAGIC.len() + 32]);
    Ok(k)
}

/// Opens a discovery datagram sent to us (`own`) by the peer it names.
pub fn open(own: &StaticSecret, datagram: &[u8]) -> Result<([u8; 32], Message), DiscoError> {
    let from = sender(datagram)?;
    if datagram.len() < HEADER_LEN + 1 + 16 {
        return Err(DiscoError::NotDisco);
    }
    let key = direction_key(own, &from, &from)?;
    let mut nonce = [0u8; 24];
    nonce.copy_from_slice(&datagram[MAGIC.len() + 32..HEADER_LEN]);
    let (body, tag) = datagram[HEADER_LEN..].split_at(datagram.len() - HEADER_LEN - 16);
    let mut body = body.to_vec();
    let tag: [u8; 16] = tag.try_into().expect("16 bytes");
    if !xaead_open(&key, &nonce, &mut body, &tag, &MAGIC) {
        return Err(DiscoError::BadSeal);
    }
    Ok((from, Message::decode_body(&body)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair() -> (StaticSecret, [u8; 32]) {
        let s = StaticSecret::random_from_rng(OsRng);
        let p = PublicKey::from(&s).to_bytes();
        (s, p)
    }

    #[test]
    fn messages_round_trip_between_the_two_peers_only() {
        let (a, a_pub) = pair();
        let (b, b_pub) = pair();
        let (c, _) = pair();
        for msg in [
            Message::Ping { tx: new_tx() },
            Message::Pong {
                tx: new_tx(),
                observed: "203.0.113.9:41641".parse().unwrap(),
            },
            Message::Pong {
                tx: new_tx(),
                observed: "[2001:db8::1]:5".parse().unwrap(),
            },
            Message::CallMeMaybe {
                endpoints: vec![
                    "192.0.2.1:1".parse().unwrap(),
                    "[2001:db8::2]:2".parse().unwrap(),
                ],
            },
            Message::RelayAllocate { peer: [7; 32] },
            Message::RelayAllocated {
                peer: [8; 32],
                port: 41643,
            },
            Message::RelayBind { cookie: None },
            Message::RelayBind {
                cookie: Some([3; COOKIE_LEN]),
            },
            Message::RelayChallenge {
                cookie: [4; COOKIE_LEN],
            },
            Message::RelayBound,
            Message::CallMeMaybeVia {
                relay: [9; 32],
                addr: "198.51.100.2:41643".parse().unwrap(),
            },
        ] {
            let d = seal(&a, &b_pub, &msg).unwrap();
            assert!(is_disco(&d));
            assert_eq!(sender(&d).unwrap(), a_pub);
            assert_eq!(open(&b, &d).unwrap(), (a_pub, msg));
            // A third party cannot open it; a flipped bit does not open.
            assert_eq!(open(&c, &d), Err(DiscoError::BadSeal));
            let mut bad = d.clone();
            *bad.last_mut().unwrap() ^= 1;
            assert_eq!(open(&b, &bad), Err(DiscoError::BadSeal));
        }
        // WireGuard messages are never taken for discovery messages.
        assert!(!is_disco(&[4, 0, 0, 0, 1, 2, 3, 4]));
        assert!(!is_disco(&[1; 148]));
    }

    #[test]
    fn a_forged_sender_key_does_not_open() {
        let (a, _) = pair();
        let (b, b_pub) = pair();
        let (_, c_pub) = pair();
        let mut d = seal(&a, &b_pub, &Message::Ping { tx: [1; TX_LEN] }).unwrap();
        d[MAGIC.len()..MAGIC.len() + 32].copy_from_slice(&c_pub);
        assert_eq!(open(&b, &d), Err(DiscoError::BadSeal));
    }

    proptest! {
        #[test]
        fn junk_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
            let (b, _) = pair();
            let mut d = MAGIC.to_vec();
            d.extend_from_slice(&tail);
            let _ = open(&b, &d);
            let _ = open(&b, &tail);
            let _ = Message::decode_body(&tail);
        }
    }
}
