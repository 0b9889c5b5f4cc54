//! STUN (RFC 5389) binding messages: pure, I/O-free encoding and parsing.
//!
//! Server side: [`parse_binding_request`] and [`binding_response`] (a success response with
//! XOR-MAPPED-ADDRESS and FINGERPRINT). Client side: [`binding_request`] (with FINGERPRINT) and
//! [`parse_binding_response`] (XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS from servers that only send
//! that). Every parser walks the attributes with bounds checks and never panics on any input.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The magic cookie of every RFC 5389 message (bytes 4..8).
pub const MAGIC_COOKIE: u32 = 0x2112_a442;
/// Length of the fixed message header.
pub const HEADER_LEN: usize = 20;
/// The port STUN servers listen on by default.
pub const DEFAULT_PORT: u16 = 3478;
/// Message type of a binding request.
pub const BINDING_REQUEST: u16 = 0x0001;
/// Message type of a binding success response.
pub const BINDING_SUCCESS: u16 = 0x0101;
/// Message type of a binding error response.
pub const BINDING_ERROR: u16 = 0x0111;
/// Attribute MAPPED-ADDRESS.
pub const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
/// Attribute ERROR-CODE.
pub const ATTR_ERROR_CODE: u16 = 0x0009;
/// Attribute XOR-MAPPED-ADDRESS.
pub const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// XOR-MAPPED-ADDRESS as some pre-RFC 5389 servers number it.
pub const ATTR_XOR_MAPPED_ADDRESS_OLD: u16 = 0x8020;
/// Attribute FINGERPRINT.
pub const ATTR_FINGERPRINT: u16 = 0x8028;
/// XOR applied to the CRC-32 of a message to form its FINGERPRINT.
pub const FINGERPRINT_XOR: u32 = 0x5354_554e;
/// Length of a binding request as [`binding_request`] builds it (header + FINGERPRINT).
pub const REQUEST_LEN: usize = HEADER_LEN + 8;
/// The longest response [`binding_response`] builds (IPv6 client).
pub const MAX_RESPONSE_LEN: usize = HEADER_LEN + 24 + 8;

/// A transaction id: 96 bits chosen by the client, echoed by the server.
pub type TxId = [u8; 12];

/// Why a datagram is not a binding request this server answers. Every variant is one
/// "junk dropped" counter of the server ([`ParseError::name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParseError {
    /// Shorter than the 20-byte header.
    TooShort,
    /// The two top bits of the type are not zero or the magic cookie is wrong: not STUN.
    NotStun,
    /// A STUN message, but not a binding request (other method or class).
    NotBindingRequest,
    /// The length field is not a multiple of 4 or does not match the datagram.
    BadLength,
    /// An attribute runs past the end of the message.
    BadAttribute,
    /// FINGERPRINT present but wrong, or not the last attribute.
    BadFingerprint,
}

impl ParseError {
    /// Every variant, in counter order.
    pub const ALL: [ParseError; 6] = [
        ParseError::TooShort,
        ParseError::NotStun,
        ParseError::NotBindingRequest,
        ParseError::BadLength,
        ParseError::BadAttribute,
        ParseError::BadFingerprint,
    ];

    /// Stable snake_case name (counter and metric label).
    pub const fn name(self) -> &'static str {
        match self {
            ParseError::TooShort => "too_short",
            ParseError::NotStun => "not_stun",
            ParseError::NotBindingRequest => "not_binding_request",
            ParseError::BadLength => "bad_length",
            ParseError::BadAttribute => "bad_attribute",
            ParseError::BadFingerprint => "bad_fingerprint",
        }
    }

    /// Position in [`ParseError::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseError::TooShort => "shorter than a STUN header",
            ParseError::NotStun => "not a STUN message (type bits or magic cookie)",
            ParseError::NotBindingRequest => "not a binding request",
            ParseError::BadLength => "length field does not match the datagram",
            ParseError::BadAttribute => "attribute runs past the end of the message",
            ParseError::BadFingerprint => "wrong or misplaced FINGERPRINT",
        })
    }
}

impl std::error::Error for ParseError {}

/// Why a datagram is not the binding response a client waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseError {
    /// Malformed (same checks as requests, see [`ParseError`]).
    Malformed(ParseError),
    /// A well-formed STUN message that is not a binding response.
    NotBindingResponse,
    /// A response to another transaction.
    TxIdMismatch,
    /// A binding error response, with its ERROR-CODE (class * 100 + number, 0 if absent) and
    /// reason phrase.
    ErrorResponse(u16, String),
    /// A success response without (valid) XOR-MAPPED-ADDRESS or MAPPED-ADDRESS.
    NoAddress,
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseError::Malformed(e) => write!(f, "malformed STUN message: {e}"),
            ResponseError::NotBindingResponse => f.write_str("not a binding response"),
            ResponseError::TxIdMismatch => f.write_str("response to another transaction"),
            ResponseError::ErrorResponse(code, reason) => {
                write!(f, "binding error response {code} {reason}")
            }
            ResponseError::NoAddress => f.write_str("binding response without a mapped address"),
        }
    }
}

impl std::error::Error for ResponseError {}

/// A binding request as the server sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindingRequest {
    /// The transaction id to echo.
    pub txid: TxId,
    /// Whether the request carried a (valid) FINGERPRINT.
    pub fingerprint: bool,
}

/// The FINGERPRINT value of a message whose bytes up to the attribute are `data`.
pub fn fingerprint(data: &[u8]) -> u32 {
    crc32fast::hash(data) ^ FINGERPRINT_XOR
}

/// Checks the header and attribute structure shared by all messages; returns the type and
/// whether a valid FINGERPRINT ends the message.
fn check_message(b: &[u8]) -> Result<(u16, bool), ParseError> {
    if b.len() < HEADER_LEN {
        return Err(ParseError::TooShort);
    }
    let msg_type = u16::from_be_bytes([b[0], b[1]]);
    if msg_type & 0xc000 != 0 || b[4..8] != MAGIC_COOKIE.to_be_bytes() {
        return Err(ParseError::NotStun);
    }
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    if !len.is_multiple_of(4) || HEADER_LEN + len != b.len() {
        return Err(ParseError::BadLength);
    }
    let mut has_fingerprint = false;
    for attr in Attributes::new(b) {
        let (t, v, start) = attr?;
        if has_fingerprint {
            // Nothing may follow FINGERPRINT.
            return Err(ParseError::BadFingerprint);
        }
        if t == ATTR_FINGERPRINT {
            let ok = v.len() == 4
                && u32::from_be_bytes([v[0], v[1], v[2], v[3]]) == fingerprint(&b[..start]);
            if !ok {
                return Err(ParseError::BadFingerprint);
            }
            has_fingerprint = true;
        }
    }
    Ok((msg_type, has_fingerprint))
}

/// Iterator over `(type, value, offset of the attribute)` of a message whose header and length
/// were checked; yields `Err(BadAttribute)` (once) for an attribute that overruns.
struct Attributes<'a> {
    msg: &'a [u8],
    off: usize,
}

impl<'a> Attributes<'a> {
    fn new(msg: &'a [u8]) -> Self {
        Attributes {
            msg,
            off: HEADER_LEN,
        }
    }
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<(u16, &'a [u8], usize), ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.msg.get(self.off..)?;
        if rest.is_empty() {
            return None;
        }
        let start = self.off;
        if rest.len() < 4 {
            self.off = self.msg.len();
            return Some(Err(ParseError::BadAttribute));
        }
        let t = u16::from_be_bytes([rest[0], rest[1]]);
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let padded = (len + 3) & !3;
        let Some(value) = rest.get(4..4 + len) else {
            self.off = self.msg.len();
            return Some(Err(ParseError::BadAttribute));
        };
        if rest.len() < 4 + padded {
            self.off = self.msg.len();
            return Some(Err(ParseError::BadAttribute));
        }
        self.off = start + 4 + padded;
        Some(Ok((t, value, start)))
    }
}

/// Parses a binding request: header (type 0x0001, magic cookie, length a multiple of 4 equal
/// to the datagram's), every attribute within bounds, FINGERPRINT verified when present (and
/// then last). Other attributes are ignored.
pub fn parse_binding_request(b: &[u8]) -> Result<BindingRequest, ParseError> {
    let (msg_type, fingerprint) = check_message(b)?;
    if msg_type != BINDING_REQUEST {
        return Err(ParseError::NotBindingRequest);
    }
    let mut txid = [0u8; 12];
    txid.copy_from_slice(&b[8..20]);
    Ok(BindingRequest { txid, fingerprint })
}

/// A binding request for `txid` with a FINGERPRINT (no other attribute).
pub fn binding_request(txid: &TxId) -> [u8; REQUEST_LEN] {
    let mut b = [0u8; REQUEST_LEN];
    b[0..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
    b[2..4].copy_from_slice(&8u16.to_be_bytes());
    b[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    b[8..20].copy_from_slice(txid);
    b[20..22].copy_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
    b[22..24].copy_from_slice(&4u16.to_be_bytes());
    let fp = fingerprint(&b[..20]);
    b[24..28].copy_from_slice(&fp.to_be_bytes());
    b
}

/// The binding success response for `txid` telling the client it was seen as `addr`:
/// XOR-MAPPED-ADDRESS (IPv4 for IPv4 and IPv4-mapped IPv6 addresses, IPv6 otherwise) then
/// FINGERPRINT. 40 bytes for IPv4, 52 for IPv6.
pub fn binding_response(txid: &TxId, addr: SocketAddr) -> Vec<u8> {
    let ip = addr.ip().to_canonical();
    let (family, ip_bytes): (u8, Vec<u8>) = match ip {
        IpAddr::V4(v4) => (1, v4.octets().to_vec()),
        IpAddr::V6(v6) => (2, v6.octets().to_vec()),
    };
    let attr_len = 4 + ip_bytes.len();
    let body_len = 4 + attr_len + 8;
    let mut b = Vec::with_capacity(HEADER_LEN + body_len);
    b.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
    b.extend_from_slice(&(body_len as u16).to_be_bytes());
    b.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    b.extend_from_slice(txid);
    b.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
    b.extend_from_slice(&(attr_len as u16).to_be_bytes());
    b.push(0);
    b.push(family);
    b.extend_from_slice(&(addr.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes());
    let key = xor_key(txid);
    b.extend(ip_bytes.iter().zip(key.iter()).map(|(a, k)| a ^ k));
    let fp = fingerprint(&b);
    b.extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
    b.extend_from_slice(&4u16.to_be_bytes());
    b.extend_from_slice(&fp.to_be_bytes());
    b
}

/// Magic cookie followed by the transaction id: the XOR key of XOR-MAPPED-ADDRESS.
fn xor_key(txid: &TxId) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    key[4..].copy_from_slice(txid);
    key
}

/// Decodes a (XOR-)MAPPED-ADDRESS value; `xor` holds the XOR key for the XOR variant.
fn decode_address(v: &[u8], xor: Option<&[u8; 16]>) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let zero = [0u8; 16];
    let key = xor.unwrap_or(&zero);
    let port = u16::from_be_bytes([v[2] ^ key[0], v[3] ^ key[1]]);
    let ip = match (v[1], v.len()) {
        (1, 8) => {
            let mut o = [0u8; 4];
            for (i, b) in o.iter_mut().enumerate() {
                *b = v[4 + i] ^ key[i];
            }
            IpAddr::V4(Ipv4Addr::from(o))
        }
        (2, 20) => {
            let mut o = [0u8; 16];
            for (i, b) in o.iter_mut().enumerate() {
                *b = v[4 + i] ^ key[i];
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Parses the answer to the binding request `txid`: the client's address as the server saw it,
/// from XOR-MAPPED-ADDRESS (either attribute number), else MAPPED-ADDRESS. FINGERPRINT is
/// verified when present and not required.
pub fn parse_binding_response(b: &[u8], txid: &TxId) -> Result<SocketAddr, ResponseError> {
    let (got, addr) = parse_any_response(b)?;
    if got != *txid {
        return Err(ResponseError::TxIdMismatch);
    }
    addr
}

/// Parses a binding success response to any transaction: its transaction id and the mapped
/// address (see [`parse_binding_response`]); the caller matches the id against the requests it
/// has in flight.
pub fn parse_response(b: &[u8]) -> Result<(TxId, SocketAddr), ResponseError> {
    let (txid, addr) = parse_any_response(b)?;
    Ok((txid, addr?))
}

/// The transaction id of a binding response (success or error) and what it says.
type AnyResponse = (TxId, Result<SocketAddr, ResponseError>);

fn parse_any_response(b: &[u8]) -> Result<AnyResponse, ResponseError> {
    let (msg_type, _) = check_message(b).map_err(ResponseError::Malformed)?;
    if msg_type != BINDING_SUCCESS && msg_type != BINDING_ERROR {
        return Err(ResponseError::NotBindingResponse);
    }
    let mut txid = [0u8; 12];
    txid.copy_from_slice(&b[8..20]);
    let key = xor_key(&txid);
    let mut xor_mapped = None;
    let mut mapped = None;
    let mut error = None;
    // Structure already checked: every item is Ok.
    for (t, v, _) in Attributes::new(b).flatten() {
        match t {
            ATTR_XOR_MAPPED_ADDRESS | ATTR_XOR_MAPPED_ADDRESS_OLD if xor_mapped.is_none() => {
                xor_mapped = decode_address(v, Some(&key));
            }
            ATTR_MAPPED_ADDRESS if mapped.is_none() => mapped = decode_address(v, None),
            ATTR_ERROR_CODE if v.len() >= 4 => {
                let code = u16::from(v[2] & 7) * 100 + u16::from(v[3]);
                error = Some((code, String::from_utf8_lossy(&v[4..]).into_owned()));
            }
            _ => {}
        }
    }
    let addr = if msg_type == BINDING_ERROR {
        let (code, reason) = error.unwrap_or((0, String::new()));
        Err(ResponseError::ErrorResponse(code, reason))
    } else {
        xor_mapped.or(mapped).ok_or(ResponseError::NoAddress)
    };
    Ok((txid, addr))
}

/// A cheap test (header only) for datagrams that look like a binding response (success or
/// error) whose length field matches: what a socket that also carries other traffic hands to
/// [`parse_response`].
pub fn is_binding_response(b: &[u8]) -> bool {
    b.len() >= HEADER_LEN
        && matches!(
            u16::from_be_bytes([b[0], b[1]]),
            BINDING_SUCCESS | BINDING_ERROR
        )
        && b[4..8] == MAGIC_COOKIE.to_be_bytes()
        && HEADER_LEN + u16::from_be_bytes([b[2], b[3]]) as usize == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        hex::decode(s).unwrap()
    }

    const RFC_TXID: TxId = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];

    /// RFC 5769 §2.1: SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME, MESSAGE-INTEGRITY,
    /// FINGERPRINT.
    fn rfc_request() -> Vec<u8> {
        hex("00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
             80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
             00 24 00 04 6e 00 01 ff
             80 29 00 08 93 2f f9 b1 51 26 3b 36
             00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
             00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
             80 28 00 04 e5 7a 3b cf")
    }

    /// RFC 5769 §2.2: XOR-MAPPED-ADDRESS 192.0.2.1:32853.
    fn rfc_v4_response() -> Vec<u8> {
        hex("01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
             80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
             00 20 00 08 00 01 a1 47 e1 12 a6 43
             00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
             80 28 00 04 c0 7d 4c 96")
    }

    /// RFC 5769 §2.3: XOR-MAPPED-ADDRESS [2001:db8:1234:5678:11:2233:4455:6677]:32853.
    fn rfc_v6_response() -> Vec<u8> {
        hex("01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
             80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
             00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
             00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
             80 28 00 04 c8 fb 0b 4c")
    }

    #[test]
    fn rfc5769_request_parses_with_its_fingerprint() {
        let r = parse_binding_request(&rfc_request()).unwrap();
        assert_eq!(r.txid, RFC_TXID);
        assert!(r.fingerprint);
        // One flipped bit anywhere before the FINGERPRINT breaks it.
        let mut bad = rfc_request();
        bad[30] ^= 1;
        assert_eq!(parse_binding_request(&bad), Err(ParseError::BadFingerprint));
    }

    #[test]
    fn rfc5769_responses_parse() {
        assert_eq!(
            parse_binding_response(&rfc_v4_response(), &RFC_TXID),
            Ok("192.0.2.1:32853".parse().unwrap())
        );
        assert_eq!(
            parse_binding_response(&rfc_v6_response(), &RFC_TXID),
            Ok("[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse()
                .unwrap())
        );
        let mut other = RFC_TXID;
        other[0] ^= 1;
        assert_eq!(
            parse_binding_response(&rfc_v4_response(), &other),
            Err(ResponseError::TxIdMismatch)
        );
        // A response is not a request, and the other way round.
        assert_eq!(
            parse_binding_request(&rfc_v4_response()),
            Err(ParseError::NotBindingRequest)
        );
        assert_eq!(
            parse_binding_response(&rfc_request(), &RFC_TXID),
            Err(ResponseError::NotBindingResponse)
        );
    }

    #[test]
    fn our_xor_mapped_address_matches_rfc5769() {
        for (sample, addr, attr_at) in [
            (rfc_v4_response(), "192.0.2.1:32853", 36..48),
            (
                rfc_v6_response(),
                "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
                36..60,
            ),
        ] {
            let ours = binding_response(&RFC_TXID, addr.parse().unwrap());
            let len = attr_at.len();
            assert_eq!(ours[20..20 + len], sample[attr_at]);
            assert_eq!(ours.len(), HEADER_LEN + len + 8);
            // Our own FINGERPRINT verifies.
            assert_eq!(
                parse_binding_response(&ours, &RFC_TXID),
                Ok(addr.parse().unwrap())
            );
        }
    }

    #[test]
    fn response_matches_the_xdp_builder() {
        let txid = [7u8; 12];
        let v4 = binding_response(&txid, "198.51.100.7:40000".parse().unwrap());
        let xdp4 = gateway_common::stun::binding_success_v4(&txid, [198, 51, 100, 7], 40000);
        assert_eq!(v4, xdp4);
        let ip6: Ipv6Addr = "2001:db8::42".parse().unwrap();
        let v6 = binding_response(&txid, SocketAddr::new(ip6.into(), 1));
        let xdp6 = gateway_common::stun::binding_success_v6(&txid, ip6.octets(), 1);
        assert_eq!(v6, xdp6);
    }

    #[test]
    fn mapped_v4_addresses_are_answered_as_v4() {
        let txid = [1u8; 12];
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:5000".parse().unwrap();
        let r = binding_response(&txid, mapped);
        assert_eq!(r.len(), 40);
        assert_eq!(
            parse_binding_response(&r, &txid),
            Ok("10.1.2.3:5000".parse().unwrap())
        );
    }

    #[test]
    fn mapped_address_fallback_and_missing_fingerprint() {
        // A success response with only MAPPED-ADDRESS and no FINGERPRINT (old servers).
        let txid = [9u8; 12];
        let mut b = Vec::new();
        b.extend_from_slice(&[0x01, 0x01, 0x00, 0x0c]);
        b.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        b.extend_from_slice(&txid);
        b.extend_from_slice(&[0x00, 0x01, 0x00, 0x08, 0x00, 0x01, 0x13, 0x88, 10, 0, 0, 1]);
        assert_eq!(
            parse_binding_response(&b, &txid),
            Ok("10.0.0.1:5000".parse().unwrap())
        );
        // Without any address attribute.
        let mut empty = b[..20].to_vec();
        empty[3] = 0;
        assert_eq!(
            parse_binding_response(&empty, &txid),
            Err(ResponseError::NoAddress)
        );
        assert!(is_binding_response(&b) && is_binding_response(&empty));
        assert!(!is_binding_response(&binding_request(&txid)));
        assert!(!is_binding_response(&b[..b.len() - 4]));
        let (got, addr) = parse_response(&b).unwrap();
        assert_eq!((got, addr), (txid, "10.0.0.1:5000".parse().unwrap()));
    }

    #[test]
    fn error_response_is_reported() {
        let txid = [3u8; 12];
        let mut b = Vec::new();
        b.extend_from_slice(&[0x01, 0x11, 0x00, 0x0c]);
        b.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        b.extend_from_slice(&txid);
        b.extend_from_slice(&[0x00, 0x09, 0x00, 0x08, 0, 0, 4, 20, b'N', b'o', b'p', b'e']);
        assert_eq!(
            parse_binding_response(&b, &txid),
            Err(ResponseError::ErrorResponse(420, "Nope".into()))
        );
    }

    #[test]
    fn junk_is_classified() {
        let txid = [5u8; 12];
        let good = binding_request(&txid);
        assert_eq!(
            parse_binding_request(&good),
            Ok(BindingRequest {
                txid,
                fingerprint: true
            })
        );
        assert_eq!(parse_binding_request(&[]), Err(ParseError::TooShort));
        assert_eq!(
            parse_binding_request(&good[..19]),
            Err(ParseError::TooShort)
        );
        // Truncated: the length field no longer matches.
        assert_eq!(
            parse_binding_request(&good[..24]),
            Err(ParseError::BadLength)
        );
        let mut cookie = good;
        cookie[4] ^= 0xff;
        assert_eq!(parse_binding_request(&cookie), Err(ParseError::NotStun));
        let mut top_bits = good;
        top_bits[0] = 0x80;
        assert_eq!(parse_binding_request(&top_bits), Err(ParseError::NotStun));
        let mut oversized = good;
        oversized[3] = 0xfc;
        assert_eq!(
            parse_binding_request(&oversized),
            Err(ParseError::BadLength)
        );
        let mut odd = good.to_vec();
        odd[3] = 9;
        odd.push(0);
        assert_eq!(parse_binding_request(&odd), Err(ParseError::BadLength));
        // An attribute claiming more than the message holds.
        let mut overrun = good;
        overrun[23] = 8;
        assert_eq!(
            parse_binding_request(&overrun),
            Err(ParseError::BadAttribute)
        );
        let mut fp = good;
        fp[27] ^= 1;
        assert_eq!(parse_binding_request(&fp), Err(ParseError::BadFingerprint));
        // Header only: no attributes at all is a valid request.
        let mut bare = good[..20].to_vec();
        bare[3] = 0;
        assert_eq!(
            parse_binding_request(&bare),
            Ok(BindingRequest {
                txid,
                fingerprint: false
            })
        );
        // An attribute after FINGERPRINT.
        let mut after = good.to_vec();
        after[3] = 16;
        after.extend_from_slice(&[0x80, 0x22, 0x00, 0x04, b't', b'e', b's', b't']);
        assert_eq!(
            parse_binding_request(&after),
            Err(ParseError::BadFingerprint)
        );
    }

    #[test]
    fn error_names_are_unique_and_indexed() {
        for (i, e) in ParseError::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
            assert!(!e.to_string().is_empty());
        }
        let mut names: Vec<_> = ParseError::ALL.iter().map(|e| e.name()).collect();
        names.dedup();
        assert_eq!(names.len(), ParseError::ALL.len());
    }

    fn any_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(Ipv4Addr::from(ip).into(), port)),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(Ipv6Addr::from(ip).into(), port)),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_binding_request(&b);
            let _ = parse_binding_response(&b, &[0; 12]);
            let _ = is_binding_response(&b);
        }

        /// Fuzz-style: a valid message with bytes overwritten, truncated or extended is
        /// either rejected or still parses, never panics; a valid length field and cookie are
        /// kept often enough to reach the attribute walk.
        #[test]
        fn mutated_messages_never_panic(
            txid in any::<TxId>(),
            addr in any_addr(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            cut in any::<usize>(),
            extra in proptest::collection::vec(any::<u8>(), 0..12),
        ) {
            for base in [binding_request(&txid).to_vec(), binding_response(&txid, addr)] {
                let mut m = base.clone();
                for &(at, v) in &edits {
                    let i = 20 + at % (m.len() - 20);
                    m[i] = v;
                }
                let _ = parse_binding_request(&m);
                let _ = parse_binding_response(&m, &txid);
                let mut t = m.clone();
                t.truncate(cut % (m.len() + 1));
                let _ = parse_binding_request(&t);
                let _ = parse_binding_response(&t, &txid);
                let mut e = m.clone();
                e.extend_from_slice(&extra);
                let len = (e.len() - 20) as u16;
                e[2..4].copy_from_slice(&len.to_be_bytes());
                let _ = parse_binding_request(&e);
                let _ = parse_binding_response(&e, &txid);
            }
        }

        #[test]
        fn request_response_round_trip(txid in any::<TxId>(), addr in any_addr()) {
            let req = binding_request(&txid);
            let parsed = parse_binding_request(&req).unwrap();
            prop_assert_eq!(parsed.txid, txid);
            prop_assert!(parsed.fingerprint);
            let resp = binding_response(&parsed.txid, addr);
            let got = parse_binding_response(&resp, &txid).unwrap();
            let want = SocketAddr::new(addr.ip().to_canonical(), addr.port());
            prop_assert_eq!(got, want);
        }
    }
}
