//! The relay's wire format: after the HTTP upgrade, both directions are a sequence of frames,
//! each a 1-byte type, a 4-byte big-endian payload length and the payload.
//!
//! Pure and I/O-free: [`Frame::encode`] appends a frame to a buffer, [`Frame::decode`] parses
//! one payload of a known type. Unknown frame types decode to [`Frame::Unknown`] so that newer
//! peers can add frames; malformed payloads of known types are errors.

use std::fmt;

/// Length of a node key (a WireGuard Curve25519 public key).
pub const KEY_LEN: usize = 32;
/// Bytes of a frame header: type and payload length.
pub const HEADER_LEN: usize = 5;
/// Largest packet a client may send through the relay (bigger than any WireGuard datagram).
pub const MAX_PACKET: usize = 64 * 1024;
/// Largest frame payload accepted (a forwarded packet with both keys).
pub const MAX_PAYLOAD: usize = MAX_PACKET + 2 * KEY_LEN;
/// First bytes of the server's key frame, which identify the protocol and its version.
pub const MAGIC: [u8; 8] = *b"TGDERP1\0";
/// Length of the server's handshake challenge.
pub const CHALLENGE_LEN: usize = 32;
/// Length of the nonce in front of sealed handshake messages (XChaCha20-Poly1305).
pub const NONCE_LEN: usize = 24;

/// A node key as carried in frames.
pub type NodeKey = [u8; KEY_LEN];

/// Frame type codes.
mod kind {
    pub const SERVER_KEY: u8 = 0x01;
    pub const CLIENT_INFO: u8 = 0x02;
    pub const SERVER_INFO: u8 = 0x03;
    pub const SEND_PACKET: u8 = 0x04;
    pub const RECV_PACKET: u8 = 0x05;
    pub const KEEP_ALIVE: u8 = 0x06;
    pub const NOTE_PREFERRED: u8 = 0x07;
    pub const PEER_GONE: u8 = 0x08;
    pub const PEER_PRESENT: u8 = 0x09;
    pub const FORWARD_PACKET: u8 = 0x0a;
    pub const WATCH_CONNS: u8 = 0x10;
    pub const PING: u8 = 0x12;
    pub const PONG: u8 = 0x13;
}

/// Why a peer is reported gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoneReason {
    /// It was connected and disconnected.
    Disconnected,
    /// A packet was sent to it but it is not connected to this relay (or its region).
    NotHere,
    /// A reason code this version does not know.
    Other(u8),
}

impl GoneReason {
    fn code(self) -> u8 {
        match self {
            GoneReason::Disconnected => 0,
            GoneReason::NotHere => 1,
            GoneReason::Other(c) => c,
        }
    }

    fn from_code(c: u8) -> GoneReason {
        match c {
            0 => GoneReason::Disconnected,
            1 => GoneReason::NotHere,
            c => GoneReason::Other(c),
        }
    }
}

/// One frame of the relay protocol.
#[derive(Clone, PartialEq, Eq)]
pub enum Frame {
    /// Server → client, first frame: the server's public key and a fresh challenge the
    /// client's sealed info must be bound to.
    ServerKey {
        /// The server's Curve25519 public key.
        key: NodeKey,
        /// Random bytes, used once.
        challenge: [u8; CHALLENGE_LEN],
    },
    /// Client → server, first frame: the client's key and its sealed info (see `auth`).
    ClientInfo {
        /// The client's node key.
        key: NodeKey,
        /// Nonce of the sealed info.
        nonce: [u8; NONCE_LEN],
        /// The sealed JSON info with its tag.
        sealed: Vec<u8>,
    },
    /// Server → client, after a valid client info: the server's sealed info.
    ServerInfo {
        /// Nonce of the sealed info.
        nonce: [u8; NONCE_LEN],
        /// The sealed JSON info with its tag.
        sealed: Vec<u8>,
    },
    /// Client → server: relay `packet` to the client with key `dst`.
    SendPacket {
        /// Destination node key.
        dst: NodeKey,
        /// The (already encrypted) packet.
        packet: Vec<u8>,
    },
    /// Server → client: `packet` from the client with key `src`.
    RecvPacket {
        /// Source node key.
        src: NodeKey,
        /// The packet.
        packet: Vec<u8>,
    },
    /// Either way: nothing, to keep middleboxes from timing the connection out.
    KeepAlive,
    /// Client → server: whether this relay is the client's home (preferred) relay.
    NotePreferred(bool),
    /// Server → client: a peer is gone (or was never here).
    PeerGone {
        /// The peer's node key.
        key: NodeKey,
        /// Why.
        reason: GoneReason,
    },
    /// Server → mesh watcher: a client with this key is connected here.
    PeerPresent(NodeKey),
    /// Mesh server → server: a packet from `src` (connected to the sending server) for `dst`
    /// (connected to the receiving server).
    ForwardPacket {
        /// Source node key.
        src: NodeKey,
        /// Destination node key.
        dst: NodeKey,
        /// The packet.
        packet: Vec<u8>,
    },
    /// Mesh server → server: send me `PeerPresent`/`PeerGone` for your clients.
    WatchConns,
    /// Either way: answer with a `Pong` carrying the same bytes.
    Ping([u8; 8]),
    /// The answer to a `Ping`.
    Pong([u8; 8]),
    /// A frame type this version does not know (ignored by both sides).
    Unknown(u8),
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Packets are summarised by length; keys by their first bytes.
        let short = |k: &NodeKey| format!("{:02x}{:02x}{:02x}{:02x}…", k[0], k[1], k[2], k[3]);
        match self {
            Frame::ServerKey { key, .. } => write!(f, "ServerKey({})", short(key)),
            Frame::ClientInfo { key, sealed, .. } => {
                write!(f, "ClientInfo({}, {} B)", short(key), sealed.len())
            }
            Frame::ServerInfo { sealed, .. } => write!(f, "ServerInfo({} B)", sealed.len()),
            Frame::SendPacket { dst, packet } => {
                write!(f, "SendPacket(→{}, {} B)", short(dst), packet.len())
            }
            Frame::RecvPacket { src, packet } => {
                write!(f, "RecvPacket(←{}, {} B)", short(src), packet.len())
            }
            Frame::KeepAlive => write!(f, "KeepAlive"),
            Frame::NotePreferred(p) => write!(f, "NotePreferred({p})"),
            Frame::PeerGone { key, reason } => write!(f, "PeerGone({}, {reason:?})", short(key)),
            Frame::PeerPresent(k) => write!(f, "PeerPresent({})", short(k)),
            Frame::ForwardPacket { src, dst, packet } => write!(
                f,
                "ForwardPacket({}→{}, {} B)",
                short(src),
                short(dst),
                packet.len()
            ),
            Frame::WatchConns => write!(f, "WatchConns"),
            Frame::Ping(d) => write!(f, "Ping({d:02x?})"),
            Frame::Pong(d) => write!(f, "Pong({d:02x?})"),
            Frame::Unknown(t) => write!(f, "Unknown(0x{t:02x})"),
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header announces more than [`MAX_PAYLOAD`] bytes.
    #[error("frame of {0} bytes is larger than the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    /// The payload is too short or too long for its type.
    #[error("frame type 0x{kind:02x} with a {len}-byte payload is malformed")]
    BadLength {
        /// The frame type.
        kind: u8,
        /// The payload length.
        len: usize,
    },
    /// The server key frame does not start with [`MAGIC`].
    #[error("not a tailgate relay (bad magic)")]
    BadMagic,
}

/// A frame header: the type and payload length, checked against [`MAX_PAYLOAD`].
pub fn decode_header(header: [u8; HEADER_LEN]) -> Result<(u8, usize), FrameError> {
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    Ok((header[0], len))
}

fn key_at(p: &[u8], at: usize) -> NodeKey {
    let mut k = [0u8; KEY_LEN];
    k.copy_from_slice(&p[at..at + KEY_LEN]);
    k
}

impl Frame {
    /// Appends the frame (header and payload) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_LEN]);
        let kind = match self {
            Frame::ServerKey { key, challenge } => {
                out.extend_from_slice(&MAGIC);
                out.extend_from_slice(key);
                out.extend_from_slice(challenge);
                kind::SERVER_KEY
            }
            Frame::ClientInfo { key, nonce, sealed } => {
                out.extend_from_slice(key);
                out.extend_from_slice(nonce);
                out.extend_from_slice(sealed);
                kind::CLIENT_INFO
            }
            Frame::ServerInfo { nonce, sealed } => {
                out.extend_from_slice(nonce);
                out.extend_from_slice(sealed);
                kind::SERVER_INFO
            }
            Frame::SendPacket { dst, packet } => {
                out.extend_from_slice(dst);
                out.extend_from_slice(packet);
                kind::SEND_PACKET
            }
            Frame::RecvPacket { src, packet } => {
                out.extend_from_slice(src);
                out.extend_from_slice(packet);
                kind::RECV_PACKET
            }
            Frame::KeepAlive => kind::KEEP_ALIVE,
            Frame::NotePreferred(p) => {
                out.push(u8::from(*p));
                kind::NOTE_PREFERRED
            }
            Frame::PeerGone { key, reason } => {
                out.extend_from_slice(key);
                out.push(reason.code());
                kind::PEER_GONE
            }
            Frame::PeerPresent(key) => {
                out.extend_from_slice(key);
                kind::PEER_PRESENT
            }
            Frame::ForwardPacket { src, dst, packet } => {
                out.extend_from_slice(src);
                out.extend_from_slice(dst);
                out.extend_from_slice(packet);
                kind::FORWARD_PACKET
            }
            Frame::WatchConns => kind::WATCH_CONNS,
            Frame::Ping(d) => {
                out.extend_from_slice(d);
                kind::PING
            }
            Frame::Pong(d) => {
                out.extend_from_slice(d);
                kind::PONG
            }
            Frame::Unknown(t) => *t,
        };
        let len = (out.len() - start - HEADER_LEN) as u32;
        out[start] = kind;
        out[start + 1..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    }

    /// Decodes the payload `p` of a frame of type `kind`.
    pub fn decode(kind: u8, p: &[u8]) -> Result<Frame, FrameError> {
        let bad = || FrameError::BadLength { kind, len: p.len() };
        let packet_after = |at: usize| -> Result<Vec<u8>, FrameError> {
            if p.len() < at || p.len() - at > MAX_PACKET {
                return Err(bad());
            }
            Ok(p[at..].to_vec())
        };
        let exact = |n: usize| if p.len() == n { Ok(()) } else { Err(bad()) };
        Ok(match kind {
            kind::SERVER_KEY => {
                exact(MAGIC.len() + KEY_LEN + CHALLENGE_LEN)?;
                if p[..MAGIC.len()] != MAGIC {
                    return Err(FrameError::BadMagic);
                }
                let mut challenge = [0u8; CHALLENGE_LEN];
                challenge.copy_from_slice(&p[MAGIC.len() + KEY_LEN..]);
                Frame::ServerKey {
                    key: key_at(p, MAGIC.len()),
                    challenge,
                }
            }
            kind::CLIENT_INFO => {
                if p.len() < KEY_LEN + NONCE_LEN + 16 || p.len() > KEY_LEN + NONCE_LEN + 4096 {
                    return Err(bad());
                }
                let mut nonce = [0u8; NONCE_LEN];
                nonce.copy_from_slice(&p[KEY_LEN..KEY_LEN + NONCE_LEN]);
                Frame::ClientInfo {
                    key: key_at(p, 0),
                    nonce,
                    sealed: p[KEY_LEN + NONCE_LEN..].to_vec(),
                }
            }
            kind::SERVER_INFO => {
                if p.len() < NONCE_LEN + 16 || p.len() > NONCE_LEN + 4096 {
                    return Err(bad());
                }
                let mut nonce = [0u8; NONCE_LEN];
                nonce.copy_from_slice(&p[..NONCE_LEN]);
                Frame::ServerInfo {
                    nonce,
                    sealed: p[NONCE_LEN..].to_vec(),
                }
            }
            kind::SEND_PACKET => Frame::SendPacket {
                packet: packet_after(KEY_LEN)?,
                dst: key_at(p, 0),
            },
            kind::RECV_PACKET => Frame::RecvPacket {
                packet: packet_after(KEY_LEN)?,
                src: key_at(p, 0),
            },
            kind::KEEP_ALIVE => {
                exact(0)?;
                Frame::KeepAlive
            }
            kind::NOTE_PREFERRED => {
                exact(1)?;
                Frame::NotePreferred(p[0] != 0)
            }
            kind::PEER_GONE => {
                exact(KEY_LEN + 1)?;
                Frame::PeerGone {
                    key: key_at(p, 0),
                    reason: GoneReason::from_code(p[KEY_LEN]),
                }
            }
            kind::PEER_PRESENT => {
                exact(KEY_LEN)?;
                Frame::PeerPresent(key_at(p, 0))
            }
            kind::FORWARD_PACKET => Frame::ForwardPacket {
                packet: packet_after(2 * KEY_LEN)?,
                src: key_at(p, 0),
                dst: key_at(p, KEY_LEN),
            },
            kind::WATCH_CONNS => {
                exact(0)?;
                Frame::WatchConns
            }
            kind::PING | kind::PONG => {
                exact(8)?;
                let mut d = [0u8; 8];
                d.copy_from_slice(p);
                if kind == kind::PING {
                    Frame::Ping(d)
                } else {
                    Frame::Pong(d)
                }
            }
            other => Frame::Unknown(other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(f: Frame) {
        let mut buf = Vec::new();
        f.encode(&mut buf);
        let (kind, len) = decode_header(buf[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(len, buf.len() - HEADER_LEN);
        assert_eq!(Frame::decode(kind, &buf[HEADER_LEN..]).unwrap(), f);
    }

    #[test]
    fn every_frame_round_trips() {
        let k = [7u8; KEY_LEN];
        for f in [
            Frame::ServerKey {
                key: k,
                challenge: [9; CHALLENGE_LEN],
            },
            Frame::ClientInfo {
                key: k,
                nonce: [1; NONCE_LEN],
                sealed: vec![3; 40],
            },
            Frame::ServerInfo {
                nonce: [1; NONCE_LEN],
                sealed: vec![3; 16],
            },
            Frame::SendPacket {
                dst: k,
                packet: vec![1, 2, 3],
            },
            Frame::RecvPacket {
                src: k,
                packet: vec![],
            },
            Frame::KeepAlive,
            Frame::NotePreferred(true),
            Frame::PeerGone {
                key: k,
                reason: GoneReason::NotHere,
            },
            Frame::PeerPresent(k),
            Frame::ForwardPacket {
                src: k,
                dst: [8; KEY_LEN],
                packet: vec![0; MAX_PACKET],
            },
            Frame::WatchConns,
            Frame::Ping(*b"12345678"),
            Frame::Pong(*b"abcdefgh"),
        ] {
            round_trip(f);
        }
    }

    #[test]
    fn header_is_type_then_big_endian_length() {
        let mut buf = Vec::new();
        Frame::Ping(*b"12345678").encode(&mut buf);
        assert_eq!(&buf[..HEADER_LEN], &[0x12, 0, 0, 0, 8]);
        assert_eq!(
            decode_header([4, 0, 2, 0, 0x41]),
            Err(FrameError::TooLarge(0x20041))
        );
    }

    #[test]
    fn malformed_payloads_are_errors() {
        assert_eq!(
            Frame::decode(kind::SEND_PACKET, &[0; 31]),
            Err(FrameError::BadLength { kind: 4, len: 31 })
        );
        let mut key_frame = vec![0u8; MAGIC.len() + KEY_LEN + CHALLENGE_LEN];
        assert_eq!(
            Frame::decode(kind::SERVER_KEY, &key_frame),
            Err(FrameError::BadMagic)
        );
        key_frame[..8].copy_from_slice(&MAGIC);
        assert!(Frame::decode(kind::SERVER_KEY, &key_frame).is_ok());
        assert!(Frame::decode(kind::KEEP_ALIVE, &[0]).is_err());
        assert!(Frame::decode(kind::SEND_PACKET, &vec![0; KEY_LEN + MAX_PACKET + 1]).is_err());
        assert_eq!(Frame::decode(0x77, &[1, 2]), Ok(Frame::Unknown(0x77)));
    }

    proptest! {
        #[test]
        fn arbitrary_payloads_never_panic(kind in any::<u8>(), p in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(f) = Frame::decode(kind, &p) {
                // Whatever decodes encodes back to a frame that decodes the same way.
                if !matches!(f, Frame::Unknown(_)) {
                    round_trip(f);
                }
            }
        }
    }
}
