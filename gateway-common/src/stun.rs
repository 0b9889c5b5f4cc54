//! STUN responder (`stun_responder` XDP program): configuration and counters.
//!
//! The program answers STUN binding requests (RFC 5389) sent over UDP (IPv4 or IPv6, no VLAN
//! tag, no IPv4 options, no IPv6 extension headers) to the configured port with `XDP_TX`: the
//! request is turned into a binding success response in place (XOR-MAPPED-ADDRESS and
//! FINGERPRINT). It answers requests that carry no attribute or a lone, correct FINGERPRINT;
//! everything else is passed to the kernel (the userspace STUN server answers or counts it).

use crate::counters::counter_enum;
use crate::port_config::PortConfig;

/// Name of the XDP program in the eBPF object.
pub const STUN_RESPONDER_PROGRAM: &str = "stun_responder";
/// Name of the `Array<StunConfig>` map (one entry, index 0).
pub const STUN_CONFIG_MAP: &str = "STUN_CONFIG";
/// Name of the `PerCpuArray<u64>` map indexed by [`StunCounter`].
pub const STUN_COUNTERS_MAP: &str = "STUN_COUNTERS";

/// [`StunConfig::flags`] bit: the program is configured; without it every packet is passed
/// uncounted (an all-zero map entry therefore means "disabled").
pub const STUN_FLAG_ENABLED: u16 = 1 << 0;

/// STUN's magic cookie (RFC 5389 §6).
pub const STUN_COOKIE: u32 = 0x2112_a442;
/// XOR applied to the CRC-32 of a message to form its FINGERPRINT (RFC 5389 §15.5).
pub const STUN_FINGERPRINT_XOR: u32 = 0x5354_554e;
/// Message type of a binding request.
pub const STUN_BINDING_REQUEST: u16 = 0x0001;
/// Message type of a binding success response.
pub const STUN_BINDING_SUCCESS: u16 = 0x0101;
/// Attribute type XOR-MAPPED-ADDRESS.
pub const STUN_ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// Attribute type FINGERPRINT.
pub const STUN_ATTR_FINGERPRINT: u16 = 0x8028;

/// Configuration of `stun_responder`, entry 0 of the `STUN_CONFIG` array map: the UDP port of
/// the STUN server and `STUN_FLAG_*` bits.
pub type StunConfig = PortConfig;

counter_enum! {
    /// Index into the `STUN_COUNTERS` per-CPU array: what `stun_responder` did with a packet.
    pub enum StunCounter {
        /// Binding request over IPv4 answered with `XDP_TX`.
        AnsweredV4 = 0 => "answered_v4",
        /// Binding request over IPv6 answered with `XDP_TX`.
        AnsweredV6 = 1 => "answered_v6",
        /// To the STUN port but not a well-formed binding request (junk, truncated, wrong cookie,
        /// type or length): passed, the userspace server counts and drops it.
        PassedNotBinding = 2 => "passed_not_binding",
        /// A binding request with attributes other than a lone FINGERPRINT, or whose FINGERPRINT
        /// is wrong: passed to the userspace server.
        PassedAttributes = 3 => "passed_attributes",
        /// To the STUN port with headers the program does not rewrite (IPv4 options, fragments):
        /// passed.
        PassedUnsupported = 4 => "passed_unsupported",
        /// The packet could not be grown for the answer (`bpf_xdp_adjust_tail` refused): passed.
        PassedTailError = 5 => "passed_tail_error",
        /// Anything not addressed to the STUN port (other ports and protocols, non-IP, VLAN-tagged
        /// frames, IPv6 with extension headers): passed.
        PassedOther = 6 => "passed_other",
    }
}

/// Length of a binding success response to an IPv4 client: header, XOR-MAPPED-ADDRESS (12),
/// FINGERPRINT (8).
pub const STUN_RESPONSE_V4_LEN: usize = 40;
/// Length of a binding success response to an IPv6 client (XOR-MAPPED-ADDRESS of 24 bytes).
pub const STUN_RESPONSE_V6_LEN: usize = 52;

/// The binding success response for transaction `txid` telling an IPv4 client that it was
/// seen as `addr:port`: the bytes the XDP responder sends (the userspace codec builds the same
/// bytes on its own).
#[inline(always)]
pub fn binding_success_v4(txid: &[u8; 12], addr: [u8; 4], port: u16) -> [u8; STUN_RESPONSE_V4_LEN] {
    let mut out = [0u8; STUN_RESPONSE_V4_LEN];
    success_header(&mut out, txid, 1, port);
    let cookie = STUN_COOKIE.to_be_bytes();
    let mut i = 0;
    while i < 4 {
        out[28 + i] = addr[i] ^ cookie[i];
        i += 1;
    }
    finish_fingerprint(&mut out);
    out
}

/// Like [`binding_success_v4`] for an IPv6 client.
#[inline(always)]
pub fn binding_success_v6(
    txid: &[u8; 12],
    addr: [u8; 16],
    port: u16,
) -> [u8; STUN_RESPONSE_V6_LEN] {
    let mut out = [0u8; STUN_RESPONSE_V6_LEN];
    success_header(&mut out, txid, 2, port);
    let cookie = STUN_COOKIE.to_be_bytes();
    let mut i = 0;
    while i < 16 {
        let key = if i < 4 { cookie[i] } else { txid[i - 4] };
        out[28 + i] = addr[i] ^ key;
        i += 1;
    }
    finish_fingerprint(&mut out);
    out
}

/// Header (type, length, cookie, txid) and the XOR-MAPPED-ADDRESS attribute header, family and
/// port of a success response filling all of `out`.
#[inline(always)]
fn success_header(out: &mut [u8], txid: &[u8; 12], family: u8, port: u16) {
    let body = (out.len() - 20) as u16;
    let attr_len = (out.len() - 20 - 4 - 8) as u16;
    out[0..2].copy_from_slice(&STUN_BINDING_SUCCESS.to_be_bytes());
    out[2..4].copy_from_slice(&body.to_be_bytes());
    out[4..8].copy_from_slice(&STUN_COOKIE.to_be_bytes());
    out[8..20].copy_from_slice(txid);
    out[20..22].copy_from_slice(&STUN_ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
    out[22..24].copy_from_slice(&attr_len.to_be_bytes());
    out[24] = 0;
    out[25] = family;
    out[26..28].copy_from_slice(&(port ^ (STUN_COOKIE >> 16) as u16).to_be_bytes());
}

/// Writes the FINGERPRINT attribute into the last 8 bytes of `out`, over everything before it.
#[inline(always)]
fn finish_fingerprint<const N: usize>(out: &mut [u8; N]) {
    let crc = crc32(&out[..N - 8]) ^ STUN_FINGERPRINT_XOR;
    out[N - 8..N - 6].copy_from_slice(&STUN_ATTR_FINGERPRINT.to_be_bytes());
    out[N - 6..N - 4].copy_from_slice(&4u16.to_be_bytes());
    out[N - 4..N].copy_from_slice(&crc.to_be_bytes());
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) of `data`, bit by bit: no table and a
/// loop bounded by the input's length, so the eBPF verifier accepts it. Never inlined: unrolled
/// into its callers, it would need more than the 512 bytes of stack an eBPF program has.
#[inline(never)]
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    let mut i = 0;
    while i < data.len() {
        crc ^= data[i] as u32;
        let mut bit = 0;
        while bit < 8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
            bit += 1;
        }
        i += 1;
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_network_order() {
        let c = StunConfig::new(3478, STUN_FLAG_ENABLED);
        assert_eq!(c.port, [0x0d, 0x96]);
        assert_eq!(c.port(), 3478);
        assert!(c.has_flag(STUN_FLAG_ENABLED));
        assert_eq!(core::mem::size_of::<StunConfig>(), 4);
    }

    #[test]
    fn v4_response_attribute_matches_rfc5769() {
        // RFC 5769 §2.2: XOR-MAPPED-ADDRESS of 192.0.2.1:32853 for this transaction.
        let txid = [
            0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        ];
        let r = binding_success_v4(&txid, [192, 0, 2, 1], 32853);
        assert_eq!(
            r[20..32],
            [0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]
        );
        assert_eq!(r[..4], [0x01, 0x01, 0x00, 0x14]);
        let r6 = binding_success_v6(
            &txid,
            [
                0x20, 0x01, 0x0d, 0xb8, 0x12, 0x34, 0x56, 0x78, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55,
                0x66, 0x77,
            ],
            32853,
        );
        assert_eq!(
            r6[20..44],
            [
                0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3,
                0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9
            ]
        );
        assert_eq!(r6[..4], [0x01, 0x01, 0x00, 0x20]);
    }

    #[test]
    fn crc32_check_value() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(&[]), 0);
    }
}
