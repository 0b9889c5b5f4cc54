//! WAN ingress (`wan_ingress` XDP program): configuration and counters.
//!
//! The program looks at UDP datagrams (IPv4 and IPv6, optionally behind one or two VLAN tags)
//! whose destination port is the tunnel's listen port and checks that they look like WireGuard
//! messages (type 1..=4, zero reserved bytes, the length the type requires); those that do not
//! are dropped. Everything else is passed to the kernel untouched.

use crate::counters::counter_enum;
use crate::port_config::PortConfig;

/// Name of the XDP program in the eBPF object.
pub const WAN_INGRESS_PROGRAM: &str = "wan_ingress";
/// Name of the `Array<WanConfig>` map (one entry, index 0).
pub const WAN_CONFIG_MAP: &str = "CONFIG";
/// Name of the `PerCpuArray<u64>` map indexed by [`WanCounter`].
pub const WAN_COUNTERS_MAP: &str = "WAN_COUNTERS";

/// [`WanConfig::flags`] bit: the program is configured; without it every packet is passed
/// uncounted (an all-zero map entry therefore means "disabled").
pub const WAN_FLAG_ENABLED: u16 = 1 << 0;
/// [`WanConfig::flags`] bit: also require transport data messages to be padded to 16 bytes
/// (`(len - 32) % 16 == 0`). Off by default: the WireGuard paper asks for padding, but boringtun
/// does not pad at all, and the Linux and Go implementations clamp the padding at the tunnel MTU
/// (so a full-size packet on a 1420-byte MTU is not a multiple of 16).
pub const WAN_FLAG_STRICT_DATA_PADDING: u16 = 1 << 1;

/// WireGuard message sizes (UDP payload bytes).
pub const WG_HANDSHAKE_INIT_LEN: u32 = 148;
pub const WG_HANDSHAKE_RESPONSE_LEN: u32 = 92;
pub const WG_COOKIE_REPLY_LEN: u32 = 64;
/// Smallest transport data message: 16-byte header + 16-byte Poly1305 tag (a keepalive).
pub const WG_DATA_MIN_LEN: u32 = 32;

/// Configuration of `wan_ingress`, entry 0 of the `CONFIG` array map: the tunnel's UDP listen
/// port and `WAN_FLAG_*` bits.
pub type WanConfig = PortConfig;

counter_enum! {
    /// Index into the `WAN_COUNTERS` per-CPU array: why `wan_ingress` passed or dropped a packet.
    ///
    /// The checks run in this order; the first failing one names the drop reason.
    pub enum WanCounter {
        /// Handshake initiation (type 1, 148 bytes), passed.
        PassWgInit = 0 => "pass_wg_init",
        /// Handshake response (type 2, 92 bytes), passed.
        PassWgResponse = 1 => "pass_wg_response",
        /// Cookie reply (type 3, 64 bytes), passed.
        PassWgCookie = 2 => "pass_wg_cookie",
        /// Transport data (type 4, at least 32 bytes), passed.
        PassWgData = 3 => "pass_wg_data",
        /// First fragment (IPv4, or IPv6 with a fragment header right after the fixed header) of a
        /// datagram to the listen port whose WireGuard header and UDP length field (the length of
        /// the whole datagram) pass the checks: passed for reassembly by the kernel. First
        /// fragments that fail them are counted under the `Drop*` reason instead, so the datagram
        /// is never reassembled.
        PassFragment = 4 => "pass_fragment",
        /// UDP payload shorter than the smallest WireGuard message (32 bytes).
        DropTooShort = 5 => "drop_too_short",
        /// Message type not in 1..=4.
        DropBadType = 6 => "drop_bad_type",
        /// Reserved bytes 1..4 not zero.
        DropBadReserved = 7 => "drop_bad_reserved",
        /// Length not the one for the message type (or, for data, not padded when strict).
        DropBadLength = 8 => "drop_bad_length",
        /// Truncated/inconsistent UDP header (UDP length < 8 or beyond the end of the frame).
        DropMalformed = 9 => "drop_malformed",
        /// Anything not addressed to the listen port (other ports, other protocols, non-IP, IPv6
        /// with extension headers other than a fragment header, non-first fragments), passed.
        OtherPassed = 10 => "other_passed",
        /// A peer discovery message (starts with [`DISCO_MAGIC`]), passed.
        PassDisco = 11 => "pass_disco",
        /// A STUN binding success response (the node asked a STUN server for its public
        /// address from the tunnel's socket), passed.
        PassStun = 12 => "pass_stun",
    }
}

/// First bytes of the peers' discovery messages (see `gateway/src/traversal/disco.rs`).
pub const DISCO_MAGIC: [u8; 6] = *b"TGdsc1";
/// Bytes of a discovery message before its sealed body (magic, key, nonce).
pub const DISCO_HEADER_LEN: u32 = 62;
/// STUN's magic cookie (RFC 5389), bytes 4..8 of every STUN message.
pub const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// STUN header length.
pub const STUN_HEADER_LEN: u32 = 20;

impl WanCounter {
    /// Whether packets counted here are passed to the kernel (`XDP_PASS`) rather than dropped.
    pub const fn is_pass(self) -> bool {
        matches!(
            self,
            WanCounter::PassWgInit
                | WanCounter::PassWgResponse
                | WanCounter::PassWgCookie
                | WanCounter::PassWgData
                | WanCounter::PassFragment
                | WanCounter::OtherPassed
                | WanCounter::PassDisco
                | WanCounter::PassStun
        )
    }
}

/// Classifies the UDP payload of a datagram addressed to the listen port.
///
/// `header` is the first eight payload bytes (only meaningful when `payload_len >= 8`), and
/// `payload_len` the UDP payload length. Returns one of the `PassWg*`, `PassDisco`,
/// `PassStun` or `Drop*` counters (never `PassFragment`, `DropMalformed` or `OtherPassed`,
/// which depend on the headers). Shared by the XDP program and the userspace tests so both
/// agree on the rules.
#[inline(always)]
pub fn classify_wg_payload(header: [u8; 8], payload_len: u32, strict_padding: bool) -> WanCounter {
    if payload_len < WG_DATA_MIN_LEN {
        return WanCounter::DropTooShort;
    }
    if header[0] == DISCO_MAGIC[0]
        && header[1] == DISCO_MAGIC[1]
        && header[2] == DISCO_MAGIC[2]
        && header[3] == DISCO_MAGIC[3]
        && header[4] == DISCO_MAGIC[4]
        && header[5] == DISCO_MAGIC[5]
    {
        return if payload_len > DISCO_HEADER_LEN {
            WanCounter::PassDisco
        } else {
            WanCounter::DropBadLength
        };
    }
    // A STUN binding success response (type 0x0101) whose length field covers the rest.
    if header[0] == 0x01
        && header[1] == 0x01
        && header[4] == STUN_MAGIC_COOKIE[0]
        && header[5] == STUN_MAGIC_COOKIE[1]
        && header[6] == STUN_MAGIC_COOKIE[2]
        && header[7] == STUN_MAGIC_COOKIE[3]
    {
        let body = u16::from_be_bytes([header[2], header[3]]) as u32;
        return if body + STUN_HEADER_LEN == payload_len {
            WanCounter::PassStun
        } else {
            WanCounter::DropBadLength
        };
    }
    let (pass, ok) = match header[0] {
        1 => (WanCounter::PassWgInit, payload_len == WG_HANDSHAKE_INIT_LEN),
        2 => (
            WanCounter::PassWgResponse,
            payload_len == WG_HANDSHAKE_RESPONSE_LEN,
        ),
        3 => (WanCounter::PassWgCookie, payload_len == WG_COOKIE_REPLY_LEN),
        4 => (
            WanCounter::PassWgData,
            // Already known to be >= WG_DATA_MIN_LEN.
            !strict_padding || (payload_len - WG_DATA_MIN_LEN) & 15 == 0,
        ),
        _ => return WanCounter::DropBadType,
    };
    if header[1] != 0 || header[2] != 0 || header[3] != 0 {
        return WanCounter::DropBadReserved;
    }
    if !ok {
        return WanCounter::DropBadLength;
    }
    pass
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_network_order() {
        let c = WanConfig::new(51820, WAN_FLAG_ENABLED | WAN_FLAG_STRICT_DATA_PADDING);
        assert_eq!(c.port, [0xca, 0x6c]);
        assert_eq!(c.flags, [0, 3]);
        assert_eq!(c.port(), 51820);
        assert!(c.has_flag(WAN_FLAG_ENABLED));
        assert_eq!(core::mem::size_of::<WanConfig>(), 4);
    }

    #[test]
    fn classify() {
        use WanCounter::*;
        let h = |t: u8| [t, 0, 0, 0, 0x12, 0x34, 0x56, 0x78];
        assert_eq!(classify_wg_payload(h(1), 148, false), PassWgInit);
        assert_eq!(classify_wg_payload(h(2), 92, false), PassWgResponse);
        assert_eq!(classify_wg_payload(h(3), 64, false), PassWgCookie);
        assert_eq!(classify_wg_payload(h(4), 32, false), PassWgData);
        assert_eq!(classify_wg_payload(h(4), 33, false), PassWgData);
        assert_eq!(classify_wg_payload(h(4), 33, true), DropBadLength);
        assert_eq!(classify_wg_payload(h(4), 48, true), PassWgData);
        assert_eq!(classify_wg_payload(h(1), 147, false), DropBadLength);
        assert_eq!(classify_wg_payload(h(1), 149, false), DropBadLength);
        assert_eq!(classify_wg_payload(h(2), 148, false), DropBadLength);
        assert_eq!(classify_wg_payload(h(3), 92, false), DropBadLength);
        assert_eq!(classify_wg_payload(h(1), 31, false), DropTooShort);
        assert_eq!(classify_wg_payload(h(0), 148, false), DropBadType);
        assert_eq!(classify_wg_payload(h(5), 148, false), DropBadType);
        assert_eq!(
            classify_wg_payload([1, 0, 1, 0, 0, 0, 0, 0], 148, false),
            DropBadReserved
        );
        // Reserved is checked before the length.
        assert_eq!(
            classify_wg_payload([2, 1, 0, 0, 0, 0, 0, 0], 100, false),
            DropBadReserved
        );
        // Discovery messages and STUN binding answers pass; look-alikes do not.
        let disco = [b'T', b'G', b'd', b's', b'c', b'1', 0, 0];
        assert_eq!(classify_wg_payload(disco, 100, false), PassDisco);
        assert_eq!(classify_wg_payload(disco, 62, false), DropBadLength);
        let stun = [0x01, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42];
        assert_eq!(classify_wg_payload(stun, 32, false), PassStun);
        assert_eq!(classify_wg_payload(stun, 40, false), DropBadLength);
        let request = [0x00, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42];
        assert_eq!(classify_wg_payload(request, 32, false), DropBadType);
    }
}
