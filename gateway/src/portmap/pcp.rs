//! Port Control Protocol (RFC 6887), version 2: MAP requests for a UDP port and ANNOUNCE
//! (to probe), over UDP to the gateway's port 5351. A NAT-PMP-only server answers a version-2
//! request with a version-0 UNSUPP_VERSION reply, reported as [`DecodeError::NatPmpOnly`].

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use rand_core::RngCore;

use super::{Handle, Mapping, Protocol, PCP_PMP_PORT, REQUESTED_LIFETIME};

/// The PCP version number.
pub const VERSION: u8 = 2;
/// The R bit of the second byte: set in responses.
pub const RESPONSE_BIT: u8 = 0x80;
/// Opcode ANNOUNCE.
pub const OP_ANNOUNCE: u8 = 0;
/// Opcode MAP.
pub const OP_MAP: u8 = 1;
/// IANA protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// Length of the common request and response header.
pub const HEADER_LEN: usize = 24;
/// Length of a MAP request or response (header and MAP opcode data, no options).
pub const MAP_LEN: usize = HEADER_LEN + 36;
/// Result code UNSUPP_VERSION.
pub const UNSUPP_VERSION: u8 = 1;

/// The common request header: version 2, R = 0 and the opcode, 2 reserved bytes, the
/// requested lifetime and the client's address as an IPv4-mapped IPv6 address.
fn header(opcode: u8, lifetime: u32, client: Ipv4Addr) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[0] = VERSION;
    b[1] = opcode & 0x7f;
    b[4..8].copy_from_slice(&lifetime.to_be_bytes());
    b[8..24].copy_from_slice(&client.to_ipv6_mapped().octets());
    b
}

/// An ANNOUNCE request (RFC 6887 14.1): the header alone, lifetime 0.
pub fn announce_request(client: Ipv4Addr) -> [u8; HEADER_LEN] {
    header(OP_ANNOUNCE, 0, client)
}

/// A MAP request (RFC 6887 11.1): the header, then the 12-byte nonce, the protocol, 3
/// reserved bytes, the internal port, the suggested external port and the suggested external
/// address (`::ffff:0.0.0.0` for "any IPv4 address"). Lifetime 0 deletes the mapping.
pub fn map_request(
    client: Ipv4Addr,
    nonce: [u8; 12],
    protocol: u8,
    internal_port: u16,
    external_port: u16,
    external_ip: Ipv4Addr,
    lifetime: u32,
) -> [u8; MAP_LEN] {
    let mut b = [0u8; MAP_LEN];
    b[..HEADER_LEN].copy_from_slice(&header(OP_MAP, lifetime, client));
    let m = &mut b[HEADER_LEN..];
    m[0..12].copy_from_slice(&nonce);
    m[12] = protocol;
    m[16..18].copy_from_slice(&internal_port.to_be_bytes());
    m[18..20].copy_from_slice(&external_port.to_be_bytes());
    m[20..36].copy_from_slice(&external_ip.to_ipv6_mapped().octets());
    b
}

/// A successful MAP response's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapResponse {
    /// The granted lifetime in seconds.
    pub lifetime: u32,
    /// The server's epoch time.
    pub epoch: u32,
    /// The request's nonce, echoed.
    pub nonce: [u8; 12],
    /// The protocol mapped.
    pub protocol: u8,
    /// The internal port mapped.
    pub internal_port: u16,
    /// The external port assigned.
    pub external_port: u16,
    /// The external address assigned (IPv4-mapped for IPv4).
    pub external_ip: Ipv6Addr,
}

/// A successful PCP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The answer to ANNOUNCE.
    Announce {
        /// The server's epoch time.
        epoch: u32,
    },
    /// The answer to MAP.
    Map(MapResponse),
}

/// Why a datagram is not a successful PCP response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the layout needs.
    #[error("PCP response too short ({0} bytes)")]
    Short(usize),
    /// A NAT-PMP server's UNSUPP_VERSION reply: the gateway speaks NAT-PMP, not PCP.
    #[error("the gateway speaks only NAT-PMP (UNSUPP_VERSION to a PCP request)")]
    NatPmpOnly,
    /// Neither version 2 nor a NAT-PMP UNSUPP_VERSION reply.
    #[error("not a PCP version 2 response (version {0})")]
    Version(u8),
    /// The R bit is clear (a request) or the opcode is not ANNOUNCE or MAP.
    #[error("unexpected PCP opcode byte {0:#04x}")]
    Opcode(u8),
    /// The server answered with a non-zero result code.
    #[error("PCP result {code} ({})", result_text(*code))]
    Result {
        /// The opcode (without the R bit).
        opcode: u8,
        /// The result code.
        code: u8,
    },
}

/// The name of a PCP result code (RFC 6887 7.4).
pub fn result_text(code: u8) -> &'static str {
    match code {
        0 => "SUCCESS",
        1 => "UNSUPP_VERSION",
        2 => "NOT_AUTHORIZED",
        3 => "MALFORMED_REQUEST",
        4 => "UNSUPP_OPCODE",
        5 => "UNSUPP_OPTION",
        6 => "MALFORMED_OPTION",
        7 => "NETWORK_FAILURE",
        8 => "NO_RESOURCES",
        9 => "UNSUPP_PROTOCOL",
        10 => "USER_EX_QUOTA",
        11 => "CANNOT_PROVIDE_EXTERNAL",
        12 => "ADDRESS_MISMATCH",
        13 => "EXCESSIVE_REMOTE_PEERS",
        _ => "unknown result code",
    }
}

/// Decodes a response: version 2, R = 1 and the opcode, a reserved byte, the result code,
/// lifetime, epoch, 12 reserved bytes, then (MAP) the opcode data; options after it are
/// ignored.
pub fn decode_response(b: &[u8]) -> Result<Response, DecodeError> {
    if b.len() < 4 {
        return Err(DecodeError::Short(b.len()));
    }
    if b[0] == 0 {
        // NAT-PMP layout: version 0, opcode, 16-bit result code.
        return Err(
            if u16::from_be_bytes([b[2], b[3]]) == u16::from(UNSUPP_VERSION) {
                DecodeError::NatPmpOnly
            } else {
                DecodeError::Version(0)
            },
        );
    }
    if b[0] != VERSION {
        return Err(DecodeError::Version(b[0]));
    }
    if b[1] & RESPONSE_BIT == 0 {
        return Err(DecodeError::Opcode(b[1]));
    }
    let opcode = b[1] & 0x7f;
    if opcode != OP_ANNOUNCE && opcode != OP_MAP {
        return Err(DecodeError::Opcode(b[1]));
    }
    if b[3] != 0 {
        return Err(DecodeError::Result { opcode, code: b[3] });
    }
    if b.len() < HEADER_LEN {
        return Err(DecodeError::Short(b.len()));
    }
    let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let lifetime = u32_at(4);
    let epoch = u32_at(8);
    if opcode == OP_ANNOUNCE {
        return Ok(Response::Announce { epoch });
    }
    if b.len() < MAP_LEN {
        return Err(DecodeError::Short(b.len()));
    }
    let m = &b[HEADER_LEN..MAP_LEN];
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&m[0..12]);
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&m[20..36]);
    Ok(Response::Map(MapResponse {
        lifetime,
        epoch,
        nonce,
        protocol: m[12],
        internal_port: u16::from_be_bytes([m[16], m[17]]),
        external_port: u16::from_be_bytes([m[18], m[19]]),
        external_ip: Ipv6Addr::from(ip),
    }))
}

/// Whether `b` answers a request with `opcode`: a version-2 response to it, or a NAT-PMP
/// server's version-0 reply (which is how it says it does not speak PCP).
fn answers(b: &[u8], opcode: u8) -> bool {
    b.len() >= 4 && ((b[0] == VERSION && b[1] == RESPONSE_BIT | opcode) || b[0] == 0)
}

/// Whether a PCP server at `gateway` answers an ANNOUNCE request (with any result code)
/// within `timeout`; a NAT-PMP server's UNSUPP_VERSION reply does not count.
pub async fn probe(gateway: Ipv4Addr, timeout: Duration) -> bool {
    let Ok((sock, local)) = super::connected_socket(gateway, PCP_PMP_PORT).await else {
        return false;
    };
    let r = super::retransmit::request_response(&sock, &announce_request(local), timeout, |b| {
        answers(b, OP_ANNOUNCE).then(|| Ok(decode_response(b)))
    })
    .await;
    matches!(
        r,
        Ok(Ok(Response::Announce { .. })) | Ok(Err(DecodeError::Result { .. }))
    )
}

/// Asks `gateway` for a UDP mapping of `local_port` (suggesting the same external port) for
/// two hours, with a fresh nonce.
pub async fn map_udp(gateway: Ipv4Addr, local_port: u16, timeout: Duration) -> Result<Mapping> {
    let mut nonce = [0u8; 12];
    rand_core::OsRng.fill_bytes(&mut nonce);
    map_udp_with(
        gateway,
        local_port,
        local_port,
        nonce,
        REQUESTED_LIFETIME,
        timeout,
    )
    .await
}

/// Sends one MAP request and waits for the response that carries `nonce`.
async fn map_exchange(
    gateway: Ipv4Addr,
    nonce: [u8; 12],
    internal_port: u16,
    external: SocketAddrV4,
    lifetime: u32,
    timeout: Duration,
) -> Result<(MapResponse, Ipv4Addr)> {
    let (sock, local) = super::connected_socket(gateway, PCP_PMP_PORT).await?;
    let req = map_request(
        local,
        nonce,
        PROTO_UDP,
        internal_port,
        external.port(),
        *external.ip(),
        lifetime,
    );
    let r = super::retransmit::request_response(&sock, &req, timeout, |b| {
        if !answers(b, OP_MAP) {
            return None;
        }
        match decode_response(b) {
            // A response for another request of ours (other nonce) is not this one's.
            Ok(Response::Map(m)) if m.nonce != nonce => None,
            Ok(Response::Map(m)) => Some(Ok(m)),
            Ok(other) => Some(Err(anyhow!("unexpected PCP response {other:?}"))),
            Err(e) => Some(Err(e.into())),
        }
    })
    .await?;
    Ok((r, local))
}

/// A MAP request for UDP `local_port` suggesting `external_port`, with `nonce` (renewals
/// repeat the mapping's nonce) and `lifetime`.
pub async fn map_udp_with(
    gateway: Ipv4Addr,
    local_port: u16,
    external_port: u16,
    nonce: [u8; 12],
    lifetime: Duration,
    timeout: Duration,
) -> Result<Mapping> {
    let secs = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX).max(1);
    let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, external_port);
    let (m, local) = map_exchange(gateway, nonce, local_port, any, secs, timeout).await?;
    let Some(ip) = m.external_ip.to_ipv4_mapped() else {
        return Err(anyhow!(
            "PCP assigned a non-IPv4 external address {}",
            m.external_ip
        ));
    };
    if m.protocol != PROTO_UDP
        || m.internal_port != local_port
        || m.external_port == 0
        || m.lifetime == 0
        || ip.is_unspecified()
    {
        return Err(anyhow!("unexpected PCP MAP response {m:?}"));
    }
    Ok(Mapping {
        protocol: Protocol::Pcp,
        external: SocketAddr::V4(SocketAddrV4::new(ip, m.external_port)),
        lifetime: Duration::from_secs(m.lifetime.into()),
        internal_port: local_port,
        gateway,
        local,
        granted_at: Instant::now(),
        handle: Handle::Pcp { nonce },
    })
}

/// Deletes a PCP mapping: MAP with lifetime 0 and the mapping's nonce (RFC 6887 15).
pub async fn unmap(mapping: &Mapping, timeout: Duration) -> Result<()> {
    let Handle::Pcp { nonce } = mapping.handle else {
        return Err(anyhow!("not a PCP mapping"));
    };
    let external = match mapping.external {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => return Err(anyhow!("unexpected IPv6 mapping {a}")),
    };
    let (m, _) = map_exchange(
        mapping.gateway,
        nonce,
        mapping.internal_port,
        external,
        0,
        timeout,
    )
    .await?;
    if m.lifetime != 0 {
        return Err(anyhow!(
            "PCP kept the mapping ({}s left) after a deletion",
            m.lifetime
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    fn mapped(ip: [u8; 4]) -> [u8; 16] {
        let mut m = [0u8; 16];
        m[10] = 0xff;
        m[11] = 0xff;
        m[12..].copy_from_slice(&ip);
        m
    }

    #[test]
    fn map_request_follows_the_rfc_layout() {
        let b = map_request(
            Ipv4Addr::new(192, 168, 5, 2),
            NONCE,
            PROTO_UDP,
            41641,
            41641,
            Ipv4Addr::UNSPECIFIED,
            7200,
        );
        let mut want = vec![2, 1, 0, 0, 0, 0, 0x1c, 0x20];
        want.extend_from_slice(&mapped([192, 168, 5, 2]));
        want.extend_from_slice(&NONCE);
        want.extend_from_slice(&[17, 0, 0, 0, 0xa2, 0xa9, 0xa2, 0xa9]);
        want.extend_from_slice(&mapped([0, 0, 0, 0]));
        assert_eq!(b.to_vec(), want);
        assert_eq!(b.len(), 60);
    }

    #[test]
    fn announce_request_is_a_bare_header() {
        let b = announce_request(Ipv4Addr::new(10, 0, 0, 9));
        let mut want = vec![2, 0, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(&mapped([10, 0, 0, 9]));
        assert_eq!(b.to_vec(), want);
    }

    fn map_response(result: u8, lifetime: u32) -> Vec<u8> {
        let mut b = vec![2, 0x81, 0, result];
        b.extend_from_slice(&lifetime.to_be_bytes());
        b.extend_from_slice(&77u32.to_be_bytes());
        b.extend_from_slice(&[0; 12]);
        b.extend_from_slice(&NONCE);
        b.extend_from_slice(&[17, 0, 0, 0, 0xa2, 0xa9, 0xa2, 0xaa]);
        b.extend_from_slice(&mapped([11, 99, 0, 5]));
        b
    }

    #[test]
    fn map_and_announce_responses_decode() {
        let r = decode_response(&map_response(0, 3600)).unwrap();
        assert_eq!(
            r,
            Response::Map(MapResponse {
                lifetime: 3600,
                epoch: 77,
                nonce: NONCE,
                protocol: 17,
                internal_port: 41641,
                external_port: 41642,
                external_ip: Ipv4Addr::new(11, 99, 0, 5).to_ipv6_mapped(),
            })
        );
        // Options after the MAP data are skipped.
        let mut with_option = map_response(0, 3600);
        with_option.extend_from_slice(&[1, 0, 0, 16]);
        with_option.extend_from_slice(&[0; 16]);
        assert_eq!(decode_response(&with_option).unwrap(), r);
        let mut announce = vec![2, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
        announce.extend_from_slice(&[0; 12]);
        assert_eq!(
            decode_response(&announce),
            Ok(Response::Announce { epoch: 5 })
        );
    }

    #[test]
    fn errors_junk_and_short_responses_are_rejected() {
        let e = decode_response(&map_response(2, 0)).unwrap_err();
        assert_eq!(e, DecodeError::Result { opcode: 1, code: 2 });
        assert!(e.to_string().contains("NOT_AUTHORIZED"), "{e}");
        // A NAT-PMP server's answer to a version-2 request.
        assert_eq!(
            decode_response(&[0, 129, 0, 1, 0, 0, 0, 9]),
            Err(DecodeError::NatPmpOnly)
        );
        assert_eq!(decode_response(&[]), Err(DecodeError::Short(0)));
        assert_eq!(decode_response(&[2, 0x81, 0]), Err(DecodeError::Short(3)));
        assert_eq!(
            decode_response(&map_response(0, 1)[..59]),
            Err(DecodeError::Short(59))
        );
        assert_eq!(
            decode_response(&map_response(0, 1)[..20]),
            Err(DecodeError::Short(20))
        );
        // A request echoed back (R bit clear), an unknown opcode, another version.
        let mut req = map_response(0, 1);
        req[1] = 0x01;
        assert_eq!(decode_response(&req), Err(DecodeError::Opcode(1)));
        req[1] = 0x82; // PEER: not requested by us.
        assert_eq!(decode_response(&req), Err(DecodeError::Opcode(0x82)));
        req[0] = 1;
        assert_eq!(decode_response(&req), Err(DecodeError::Version(1)));
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..128)) {
            let _ = decode_response(&b);
        }

        #[test]
        fn random_bodies_after_a_valid_header_never_panic(
            op in proptest::sample::select(vec![0x80u8, 0x81]), code in 0u8..3,
            rest in proptest::collection::vec(proptest::num::u8::ANY, 0..80)
        ) {
            let mut b = vec![2, op, 0, code];
            b.extend_from_slice(&rest);
            let _ = decode_response(&b);
        }
    }
}
