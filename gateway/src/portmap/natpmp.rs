//! NAT-PMP (RFC 6886): the external address (opcode 0) and UDP mappings (opcode 1), over UDP
//! to the gateway's port 5351.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use super::{Handle, Mapping, Protocol, PCP_PMP_PORT, REQUESTED_LIFETIME};

/// The NAT-PMP version number.
pub const VERSION: u8 = 0;
/// Opcode: what is the external address?
pub const OP_EXTERNAL_ADDRESS: u8 = 0;
/// Opcode: map a UDP port.
pub const OP_MAP_UDP: u8 = 1;
/// Opcode: map a TCP port.
pub const OP_MAP_TCP: u8 = 2;
/// Added to the request opcode in responses.
pub const RESPONSE_BIT: u8 = 128;

/// The external-address request (RFC 6886 3.2): version 0, opcode 0.
pub fn external_address_request() -> [u8; 2] {
    [VERSION, OP_EXTERNAL_ADDRESS]
}

/// A mapping request (RFC 6886 3.3): version, opcode (1 UDP, 2 TCP), 2 reserved bytes, the
/// internal port, the suggested external port and the requested lifetime in seconds (0 with
/// external port 0 deletes the mapping), all big-endian.
pub fn map_request(opcode: u8, internal_port: u16, external_port: u16, lifetime: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = VERSION;
    b[1] = opcode;
    b[4..6].copy_from_slice(&internal_port.to_be_bytes());
    b[6..8].copy_from_slice(&external_port.to_be_bytes());
    b[8..12].copy_from_slice(&lifetime.to_be_bytes());
    b
}

/// A successful NAT-PMP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The answer to opcode 0.
    ExternalAddress {
        /// Seconds since the server's port-mapping table was (re)initialised.
        epoch: u32,
        /// The gateway's public IPv4 address.
        address: Ipv4Addr,
    },
    /// The answer to opcode 1 or 2.
    Map {
        /// The request's opcode (1 UDP, 2 TCP).
        opcode: u8,
        /// Seconds since the server's table was (re)initialised.
        epoch: u32,
        /// The internal port mapped.
        internal_port: u16,
        /// The external port granted (0 after a deletion).
        external_port: u16,
        /// The granted lifetime in seconds.
        lifetime: u32,
    },
}

/// Why a datagram is not a successful NAT-PMP response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the opcode's layout needs.
    #[error("NAT-PMP response too short ({0} bytes)")]
    Short(usize),
    /// Not version 0 (e.g. a PCP answer).
    #[error("not a NAT-PMP response (version {0})")]
    Version(u8),
    /// The opcode lacks the response bit or is unknown.
    #[error("unexpected NAT-PMP opcode {0}")]
    Opcode(u8),
    /// The server answered with a non-zero result code.
    #[error("NAT-PMP result {code} ({}) for opcode {opcode}", result_text(*code))]
    Result {
        /// The response opcode.
        opcode: u8,
        /// The result code.
        code: u16,
    },
}

/// What a NAT-PMP result code means (RFC 6886 3.5).
pub fn result_text(code: u16) -> &'static str {
    match code {
        0 => "success",
        1 => "unsupported version",
        2 => "not authorized/refused",
        3 => "network failure",
        4 => "out of resources",
        5 => "unsupported opcode",
        _ => "unknown result code",
    }
}

/// Decodes a response: version 0, opcode 128 + request opcode, 16-bit result code, 32-bit
/// epoch, then the opcode's fields. A non-zero result code is an error (such replies may be
/// only 8 bytes long).
pub fn decode_response(b: &[u8]) -> Result<Response, DecodeError> {
    if b.len() < 2 {
        return Err(DecodeError::Short(b.len()));
    }
    if b[0] != VERSION {
        return Err(DecodeError::Version(b[0]));
    }
    let opcode = b[1];
    if opcode < RESPONSE_BIT || opcode - RESPONSE_BIT > OP_MAP_TCP {
        return Err(DecodeError::Opcode(opcode));
    }
    if b.len() < 4 {
        return Err(DecodeError::Short(b.len()));
    }
    let code = u16::from_be_bytes([b[2], b[3]]);
    if code != 0 {
        return Err(DecodeError::Result { opcode, code });
    }
    let need = if opcode == RESPONSE_BIT + OP_EXTERNAL_ADDRESS {
        12
    } else {
        16
    };
    if b.len() < need {
        return Err(DecodeError::Short(b.len()));
    }
    let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let epoch = u32_at(4);
    Ok(if opcode == RESPONSE_BIT + OP_EXTERNAL_ADDRESS {
        Response::ExternalAddress {
            epoch,
            address: Ipv4Addr::new(b[8], b[9], b[10], b[11]),
        }
    } else {
        Response::Map {
            opcode: opcode - RESPONSE_BIT,
            epoch,
            internal_port: u16_at(8),
            external_port: u16_at(10),
            lifetime: u32_at(12),
        }
    })
}

/// Sends `request` to `gateway:5351` until a response to `opcode` arrives (within
/// `timeout`). Ok(Err) is a well-formed error response.
async fn exchange(
    gateway: Ipv4Addr,
    request: &[u8],
    opcode: u8,
    timeout: Duration,
) -> Result<(Result<Response, DecodeError>, Ipv4Addr)> {
    let (sock, local) = super::connected_socket(gateway, PCP_PMP_PORT).await?;
    let r = super::retransmit::request_response(&sock, request, timeout, |b| {
        // Only answers to this request count; anything else (stray PCP, junk) is ignored.
        (b.len() >= 2 && b[0] == VERSION && b[1] == RESPONSE_BIT + opcode)
            .then(|| Ok(decode_response(b)))
    })
    .await?;
    Ok((r, local))
}

/// The gateway's external IPv4 address.
pub async fn external_address(gateway: Ipv4Addr, timeout: Duration) -> Result<Ipv4Addr> {
    let (r, _) = exchange(
        gateway,
        &external_address_request(),
        OP_EXTERNAL_ADDRESS,
        timeout,
    )
    .await?;
    match r? {
        Response::ExternalAddress { address, .. } => Ok(address),
        other => Err(anyhow!("unexpected NAT-PMP response {other:?}")),
    }
}

/// Whether a NAT-PMP server at `gateway` answers the external-address request (with any
/// result code) within `timeout`.
pub async fn probe(gateway: Ipv4Addr, timeout: Duration) -> bool {
    match exchange(
        gateway,
        &external_address_request(),
        OP_EXTERNAL_ADDRESS,
        timeout,
    )
    .await
    {
        Ok((r, _)) => r.is_ok() || matches!(r, Err(DecodeError::Result { .. })),
        Err(_) => false,
    }
}

/// Asks `gateway` for a UDP mapping of `local_port` (suggesting the same external port) for
/// two hours.
pub async fn map_udp(gateway: Ipv4Addr, local_port: u16, timeout: Duration) -> Result<Mapping> {
    map_udp_port(gateway, local_port, local_port, timeout).await
}

/// [`map_udp`] suggesting `external_port` (renewals suggest the port they hold).
pub async fn map_udp_port(
    gateway: Ipv4Addr,
    local_port: u16,
    external_port: u16,
    timeout: Duration,
) -> Result<Mapping> {
    let deadline = Instant::now() + timeout;
    let address = external_address(gateway, timeout).await?;
    if address.is_unspecified() {
        return Err(anyhow!("the NAT-PMP server has no external address yet"));
    }
    let left = deadline.saturating_duration_since(Instant::now());
    let lifetime = REQUESTED_LIFETIME.as_secs() as u32;
    let req = map_request(OP_MAP_UDP, local_port, external_port, lifetime);
    let (r, local) = exchange(
        gateway,
        &req,
        OP_MAP_UDP,
        left.max(Duration::from_millis(250)),
    )
    .await?;
    match r? {
        Response::Map {
            internal_port,
            external_port,
            lifetime,
            ..
        } if internal_port == local_port && external_port != 0 && lifetime != 0 => Ok(Mapping {
            protocol: Protocol::Pmp,
            external: SocketAddr::V4(SocketAddrV4::new(address, external_port)),
            lifetime: Duration::from_secs(lifetime.into()),
            internal_port,
            gateway,
            local,
            granted_at: Instant::now(),
            handle: Handle::Pmp,
        }),
        other => Err(anyhow!("unexpected NAT-PMP mapping response {other:?}")),
    }
}

/// Deletes a NAT-PMP mapping: a request for its internal port with lifetime 0 and external
/// port 0 (RFC 6886 3.4).
pub async fn unmap(mapping: &Mapping, timeout: Duration) -> Result<()> {
    let req = map_request(OP_MAP_UDP, mapping.internal_port, 0, 0);
    let (r, _) = exchange(mapping.gateway, &req, OP_MAP_UDP, timeout).await?;
    match r? {
        Response::Map {
            internal_port,
            lifetime: 0,
            ..
        } if internal_port == mapping.internal_port => Ok(()),
        other => Err(anyhow!("unexpected NAT-PMP deletion response {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_follow_the_rfc_layout() {
        assert_eq!(external_address_request(), [0, 0]);
        assert_eq!(
            map_request(OP_MAP_UDP, 41641, 0x1234, 7200),
            [0, 1, 0, 0, 0xa2, 0xa9, 0x12, 0x34, 0, 0, 0x1c, 0x20]
        );
        // Deletion: lifetime 0, external port 0.
        assert_eq!(
            map_request(OP_MAP_UDP, 41641, 0, 0),
            [0, 1, 0, 0, 0xa2, 0xa9, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn responses_decode() {
        let ext = [0, 128, 0, 0, 0, 0, 1, 0, 203, 0, 113, 7];
        assert_eq!(
            decode_response(&ext),
            Ok(Response::ExternalAddress {
                epoch: 256,
                address: Ipv4Addr::new(203, 0, 113, 7)
            })
        );
        let map = [
            0, 129, 0, 0, 0, 0, 0, 9, 0xa2, 0xa9, 0xa2, 0xaa, 0, 0, 0x0e, 0x10,
        ];
        assert_eq!(
            decode_response(&map),
            Ok(Response::Map {
                opcode: OP_MAP_UDP,
                epoch: 9,
                internal_port: 41641,
                external_port: 41642,
                lifetime: 3600
            })
        );
    }

    #[test]
    fn junk_short_and_error_responses_are_rejected() {
        assert_eq!(decode_response(&[]), Err(DecodeError::Short(0)));
        assert_eq!(decode_response(&[0]), Err(DecodeError::Short(1)));
        // A request (no response bit) and unknown opcodes.
        assert_eq!(decode_response(&[0, 1, 0, 0]), Err(DecodeError::Opcode(1)));
        assert_eq!(
            decode_response(&[0, 131, 0, 0]),
            Err(DecodeError::Opcode(131))
        );
        // PCP's version.
        assert_eq!(
            decode_response(&[2, 129, 0, 0]),
            Err(DecodeError::Version(2))
        );
        // Truncated bodies.
        assert_eq!(
            decode_response(&[0, 128, 0, 0, 0, 0, 0, 1, 10, 0]),
            Err(DecodeError::Short(10))
        );
        assert_eq!(
            decode_response(&[0, 129, 0, 0, 0, 0, 0, 1, 0, 1, 0, 1, 0, 0, 0]),
            Err(DecodeError::Short(15))
        );
        // Result codes, in the short 8-byte form servers may use for errors.
        let refused = decode_response(&[0, 129, 0, 2, 0, 0, 0, 1]).unwrap_err();
        assert_eq!(
            refused,
            DecodeError::Result {
                opcode: 129,
                code: 2
            }
        );
        assert!(
            refused.to_string().contains("not authorized/refused"),
            "{refused}"
        );
        let e = decode_response(&[0, 128, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0]).unwrap_err();
        assert!(e.to_string().contains("network failure"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = decode_response(&b);
        }

        #[test]
        fn random_bytes_with_a_valid_header_never_panic(
            op in 128u8..=130, code in 0u16..8,
            rest in proptest::collection::vec(proptest::num::u8::ANY, 0..20)
        ) {
            let mut b = vec![0, op];
            b.extend_from_slice(&code.to_be_bytes());
            b.extend_from_slice(&rest);
            let _ = decode_response(&b);
        }
    }
}
