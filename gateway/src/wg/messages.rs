//! Zero-copy parsing of the four WireGuard message types, with the exact length checks of the
//! kernel module. Every function here is total: junk gives a [`WireError`], never a panic.

/// Size of a handshake initiation.
pub const HANDSHAKE_INIT_LEN: usize = 148;
/// Size of a handshake response.
pub const HANDSHAKE_RESPONSE_LEN: usize = 92;
/// Size of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 64;
/// Size of the transport data header (type, receiver index, counter).
pub const DATA_HEADER_LEN: usize = 16;
/// Size of a Poly1305 tag.
pub const AEAD_TAG_LEN: usize = 16;
/// Smallest transport data message: header plus the tag of an empty (keepalive) payload.
pub const DATA_MIN_LEN: usize = DATA_HEADER_LEN + AEAD_TAG_LEN;
/// Transport plaintexts are zero-padded to a multiple of this.
pub const PADDING_MULTIPLE: usize = 16;

// Field offsets (initiation).
pub(crate) const INIT_SENDER: usize = 4;
pub(crate) const INIT_EPHEMERAL: usize = 8;
pub(crate) const INIT_STATIC: usize = 40;
pub(crate) const INIT_TIMESTAMP: usize = 88;
pub(crate) const INIT_MAC1: usize = 116;
pub(crate) const INIT_MAC2: usize = 132;
// Field offsets (response).
pub(crate) const RESP_SENDER: usize = 4;
pub(crate) const RESP_RECEIVER: usize = 8;
pub(crate) const RESP_EPHEMERAL: usize = 12;
pub(crate) const RESP_EMPTY: usize = 44;
pub(crate) const RESP_MAC1: usize = 60;
pub(crate) const RESP_MAC2: usize = 76;
// Field offsets (cookie reply).
pub(crate) const COOKIE_RECEIVER: usize = 4;
pub(crate) const COOKIE_NONCE: usize = 8;
pub(crate) const COOKIE_ENCRYPTED: usize = 32;

/// The message type: the first four bytes, little-endian (so bytes 1..4 must be zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// Handshake initiation (type 1, 148 bytes).
    HandshakeInit = 1,
    /// Handshake response (type 2, 92 bytes).
    HandshakeResponse = 2,
    /// Cookie reply (type 3, 64 bytes).
    CookieReply = 3,
    /// Transport data (type 4, at least 32 bytes).
    Data = 4,
}

impl MessageType {
    /// The 4-byte little-endian header value.
    pub const fn header(self) -> [u8; 4] {
        [self as u8, 0, 0, 0]
    }
}

/// Why a datagram is not a WireGuard message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than the 4-byte type field.
    #[error("too short")]
    TooShort,
    /// The 32-bit type field is not 1, 2, 3 or 4.
    #[error("unknown message type")]
    UnknownType,
    /// The length does not match the message type.
    #[error("bad length for {0:?}")]
    BadLength(MessageType),
}

impl WireError {
    /// A short, stable label for drop counters.
    pub fn label(&self) -> &'static str {
        match self {
            WireError::TooShort => "too_short",
            WireError::UnknownType => "unknown_type",
            WireError::BadLength(MessageType::HandshakeInit) => "bad_length_init",
            WireError::BadLength(MessageType::HandshakeResponse) => "bad_length_response",
            WireError::BadLength(MessageType::CookieReply) => "bad_length_cookie",
            WireError::BadLength(MessageType::Data) => "bad_length_data",
        }
    }
}

/// A handshake initiation (message type 1), borrowed from the datagram.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeInit<'a> {
    /// The whole 148-byte message (MACs are computed over its prefix).
    pub raw: &'a [u8; HANDSHAKE_INIT_LEN],
    /// The initiator's session index.
    pub sender_index: u32,
    /// The initiator's ephemeral public key.
    pub unencrypted_ephemeral: &'a [u8; 32],
    /// The initiator's static public key, encrypted (32 + 16 bytes).
    pub encrypted_static: &'a [u8; 48],
    /// The TAI64N timestamp, encrypted (12 + 16 bytes).
    pub encrypted_timestamp: &'a [u8; 28],
    /// MAC1.
    pub mac1: &'a [u8; 16],
    /// MAC2 (all zero unless the initiator holds a cookie).
    pub mac2: &'a [u8; 16],
}

/// A handshake response (message type 2), borrowed from the datagram.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeResponse<'a> {
    /// The whole 92-byte message.
    pub raw: &'a [u8; HANDSHAKE_RESPONSE_LEN],
    /// The responder's session index.
    pub sender_index: u32,
    /// Our (the initiator's) session index.
    pub receiver_index: u32,
    /// The responder's ephemeral public key.
    pub unencrypted_ephemeral: &'a [u8; 32],
    /// The empty payload's tag.
    pub encrypted_nothing: &'a [u8; 16],
    /// MAC1.
    pub mac1: &'a [u8; 16],
    /// MAC2.
    pub mac2: &'a [u8; 16],
}

/// A cookie reply (message type 3), borrowed from the datagram.
#[derive(Debug, Clone, Copy)]
pub struct CookieReply<'a> {
    /// Our session index (the sender index of the message that provoked the reply).
    pub receiver_index: u32,
    /// XChaCha20 nonce.
    pub nonce: &'a [u8; 24],
    /// The encrypted 16-byte cookie and its tag.
    pub encrypted_cookie: &'a [u8; 32],
}

/// A transport data message (type 4), borrowed from the datagram.
#[derive(Debug, Clone, Copy)]
pub struct DataPacket<'a> {
    /// Our session index.
    pub receiver_index: u32,
    /// The 64-bit nonce counter.
    pub counter: u64,
    /// Ciphertext and tag (at least 16 bytes).
    pub encrypted: &'a [u8],
}

/// Any WireGuard message.
#[derive(Debug, Clone, Copy)]
pub enum Packet<'a> {
    /// Type 1.
    HandshakeInit(HandshakeInit<'a>),
    /// Type 2.
    HandshakeResponse(HandshakeResponse<'a>),
    /// Type 3.
    CookieReply(CookieReply<'a>),
    /// Type 4.
    Data(DataPacket<'a>),
}

impl Packet<'_> {
    /// The message type.
    pub fn message_type(&self) -> MessageType {
        match self {
            Packet::HandshakeInit(_) => MessageType::HandshakeInit,
            Packet::HandshakeResponse(_) => MessageType::HandshakeResponse,
            Packet::CookieReply(_) => MessageType::CookieReply,
            Packet::Data(_) => MessageType::Data,
        }
    }

    /// Our session index this message is addressed to; `None` for initiations, which are
    /// routed by the initiator's static key instead.
    pub fn receiver_index(&self) -> Option<u32> {
        match self {
            Packet::HandshakeInit(_) => None,
            Packet::HandshakeResponse(r) => Some(r.receiver_index),
            Packet::CookieReply(c) => Some(c.receiver_index),
            Packet::Data(d) => Some(d.receiver_index),
        }
    }
}

/// A fixed-size field at `at`; the caller has checked the length, but stay total anyway.
#[inline(always)]
pub(crate) fn field<const N: usize>(b: &[u8], at: usize) -> Option<&[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

#[inline(always)]
fn le32(b: &[u8], at: usize) -> Option<u32> {
    field::<4>(b, at).map(|x| u32::from_le_bytes(*x))
}

/// Parses any datagram without copying. Lengths are exact for handshake messages and at least
/// 32 bytes for data; the 32-bit type field must be exactly 1..=4 (reserved bytes zero).
pub fn parse_packet(b: &[u8]) -> Result<Packet<'_>, WireError> {
    let ty = le32(b, 0).ok_or(WireError::TooShort)?;
    match ty {
        1 => parse_init(b).map(Packet::HandshakeInit),
        2 => parse_response(b).map(Packet::HandshakeResponse),
        3 => parse_cookie(b).map(Packet::CookieReply),
        4 => parse_data(b).map(Packet::Data),
        _ => Err(WireError::UnknownType),
    }
}

fn parse_init(b: &[u8]) -> Result<HandshakeInit<'_>, WireError> {
    let bad = WireError::BadLength(MessageType::HandshakeInit);
    let raw: &[u8; HANDSHAKE_INIT_LEN] = b.try_into().map_err(|_| bad)?;
    (|| {
        Some(HandshakeInit {
            raw,
            sender_index: le32(raw, INIT_SENDER)?,
            unencrypted_ephemeral: field(raw, INIT_EPHEMERAL)?,
            encrypted_static: field(raw, INIT_STATIC)?,
            encrypted_timestamp: field(raw, INIT_TIMESTAMP)?,
            mac1: field(raw, INIT_MAC1)?,
            mac2: field(raw, INIT_MAC2)?,
        })
    })()
    .ok_or(bad)
}

fn parse_response(b: &[u8]) -> Result<HandshakeResponse<'_>, WireError> {
    let bad = WireError::BadLength(MessageType::HandshakeResponse);
    let raw: &[u8; HANDSHAKE_RESPONSE_LEN] = b.try_into().map_err(|_| bad)?;
    (|| {
        Some(HandshakeResponse {
            raw,
            sender_index: le32(raw, RESP_SENDER)?,
            receiver_index: le32(raw, RESP_RECEIVER)?,
            unencrypted_ephemeral: field(raw, RESP_EPHEMERAL)?,
            encrypted_nothing: field(raw, RESP_EMPTY)?,
            mac1: field(raw, RESP_MAC1)?,
            mac2: field(raw, RESP_MAC2)?,
        })
    })()
    .ok_or(bad)
}

fn parse_cookie(b: &[u8]) -> Result<CookieReply<'_>, WireError> {
    let bad = WireError::BadLength(MessageType::CookieReply);
    if b.len() != COOKIE_REPLY_LEN {
        return Err(bad);
    }
    (|| {
        Some(CookieReply {
            receiver_index: le32(b, COOKIE_RECEIVER)?,
            nonce: field(b, COOKIE_NONCE)?,
            encrypted_cookie: field(b, COOKIE_ENCRYPTED)?,
        })
    })()
    .ok_or(bad)
}

fn parse_data(b: &[u8]) -> Result<DataPacket<'_>, WireError> {
    let bad = WireError::BadLength(MessageType::Data);
    if b.len() < DATA_MIN_LEN {
        return Err(bad);
    }
    let counter = field::<8>(b, 8)
        .map(|x| u64::from_le_bytes(*x))
        .ok_or(bad)?;
    Ok(DataPacket {
        receiver_index: le32(b, 4).ok_or(bad)?,
        counter,
        encrypted: b.get(DATA_HEADER_LEN..).ok_or(bad)?,
    })
}

/// Writes a transport data header into `dst[..16]`. `dst` must be at least 16 bytes.
#[inline(always)]
pub(crate) fn write_data_header(
    dst: &mut [u8; DATA_HEADER_LEN],
    receiver_index: u32,
    counter: u64,
) {
    dst[0..4].copy_from_slice(&MessageType::Data.header());
    dst[4..8].copy_from_slice(&receiver_index.to_le_bytes());
    dst[8..16].copy_from_slice(&counter.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exact_lengths() {
        for (ty, len) in [(1u8, 148usize), (2, 92), (3, 64)] {
            let mut b = vec![0u8; len + 1];
            b[0] = ty;
            assert!(parse_packet(&b[..len]).is_ok(), "type {ty}");
            assert!(matches!(parse_packet(&b), Err(WireError::BadLength(_))));
            assert!(matches!(
                parse_packet(&b[..len - 1]),
                Err(WireError::BadLength(_))
            ));
        }
        let mut d = vec![0u8; 32];
        d[0] = 4;
        d[4..8].copy_from_slice(&0x01020304u32.to_le_bytes());
        d[8..16].copy_from_slice(&7u64.to_le_bytes());
        match parse_packet(&d).unwrap() {
            Packet::Data(p) => {
                assert_eq!(p.receiver_index, 0x01020304);
                assert_eq!(p.counter, 7);
                assert_eq!(p.encrypted.len(), 16);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_packet(&d[..31]).is_err());
        // Data lengths need not be a multiple of 16.
        d.push(0);
        assert!(parse_packet(&d).is_ok());
    }

    #[test]
    fn type_is_a_32_bit_field() {
        let mut b = vec![0u8; 148];
        b[0] = 1;
        b[2] = 1;
        assert_eq!(parse_packet(&b).unwrap_err(), WireError::UnknownType);
        assert_eq!(parse_packet(&[]).unwrap_err(), WireError::TooShort);
        assert_eq!(parse_packet(&[1, 0, 0]).unwrap_err(), WireError::TooShort);
        assert_eq!(
            parse_packet(&[5, 0, 0, 0]).unwrap_err(),
            WireError::UnknownType
        );
        assert_eq!(
            parse_packet(&[0, 0, 0, 0]).unwrap_err(),
            WireError::UnknownType
        );
    }

    #[test]
    fn fields_are_where_the_paper_says() {
        let mut b = [0u8; 148];
        b[0] = 1;
        b[4..8].copy_from_slice(&0xdeadbeefu32.to_le_bytes());
        b[8] = 0xe0;
        b[40] = 0x50;
        b[88] = 0x70;
        b[116] = 0x11;
        b[132] = 0x22;
        let Ok(Packet::HandshakeInit(i)) = parse_packet(&b) else {
            panic!()
        };
        assert_eq!(i.sender_index, 0xdeadbeef);
        assert_eq!(
            (
                i.unencrypted_ephemeral[0],
                i.encrypted_static[0],
                i.encrypted_timestamp[0]
            ),
            (0xe0, 0x50, 0x70)
        );
        assert_eq!((i.mac1[0], i.mac2[0]), (0x11, 0x22));

        let mut r = [0u8; 92];
        r[0] = 2;
        r[4..8].copy_from_slice(&5u32.to_le_bytes());
        r[8..12].copy_from_slice(&6u32.to_le_bytes());
        r[12] = 0xe1;
        r[44] = 0x33;
        r[60] = 0x44;
        r[76] = 0x55;
        let p = parse_packet(&r).unwrap();
        assert_eq!(p.receiver_index(), Some(6));
        let Packet::HandshakeResponse(r) = p else {
            panic!()
        };
        assert_eq!(
            (
                r.sender_index,
                r.unencrypted_ephemeral[0],
                r.encrypted_nothing[0]
            ),
            (5, 0xe1, 0x33)
        );
        assert_eq!((r.mac1[0], r.mac2[0]), (0x44, 0x55));

        let mut c = [0u8; 64];
        c[0] = 3;
        c[4..8].copy_from_slice(&9u32.to_le_bytes());
        c[8] = 0x66;
        c[32] = 0x77;
        let Ok(Packet::CookieReply(c)) = parse_packet(&c) else {
            panic!()
        };
        assert_eq!(
            (c.receiver_index, c.nonce[0], c.encrypted_cookie[0]),
            (9, 0x66, 0x77)
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_packet(&b);
        }

        #[test]
        fn parse_typed_junk_never_panics(ty in 0u8..6, len in 0usize..200, fill in any::<u8>()) {
            let mut b = vec![fill; len];
            if let Some(x) = b.first_mut() { *x = ty; }
            for x in b.iter_mut().skip(1).take(3) { *x = 0; }
            if let Ok(p) = parse_packet(&b) {
                let _ = p.receiver_index();
                prop_assert_eq!(p.message_type() as u8, ty);
            }
        }
    }
}
