//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Sums are kept unfolded in a `u64` (big-endian 16-bit words; an odd trailing byte is padded
//! with zero) so that pieces can be added up before one [`fold`]. A checksum field holds
//! [`finish`] of the sum over everything it covers, with the field itself taken as zero.
//!
//! Incremental updates use RFC 1624 equation 3, `HC' = ~(~HC + ~m + m')`. For a checksum that
//! was computed in full over data that is not all zero, the result is bit-identical to a full
//! recomputation (both give a folded sum in `1..=0xffff`), so the XDP and userspace paths
//! produce the same bytes whichever way they compute.

/// Adds `data` to `sum` as big-endian 16-bit words (odd trailing byte padded with zero).
/// Reads 32 bits at a time: the folded result is the same as word by word, in half the steps.
pub fn sum(data: &[u8], mut sum: u64) -> u64 {
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        sum += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    sum + u64::from(u32::from_be_bytes(tail))
}

/// Folds a sum to 16 bits with end-around carry.
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum field value for a sum: the ones' complement of the folded sum.
pub fn finish(sum: u64) -> u16 {
    !fold(sum)
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum(data, 0))
}

/// True if `data` including its checksum field sums to `0xffff` (a valid checksum).
pub fn verify(data: &[u8], initial: u64) -> bool {
    fold(sum(data, initial)) == 0xffff
}

/// Sum of the IPv4 pseudo-header for TCP/UDP (RFC 793/768).
pub fn pseudo_header_v4(src: [u8; 4], dst: [u8; 4], proto: u8, len: u16) -> u64 {
    sum(&src, 0) + sum(&dst, 0) + u64::from(proto) + u64::from(len)
}

/// Sum of the IPv6 pseudo-header for TCP/UDP/ICMPv6 (RFC 8200 §8.1).
pub fn pseudo_header_v6(src: [u8; 16], dst: [u8; 16], next_header: u8, len: u32) -> u64 {
    sum(&src, 0)
        + sum(&dst, 0)
        + u64::from(next_header)
        + u64::from(len >> 16)
        + u64::from(len & 0xffff)
}

/// RFC 1624 eq. 3 with whole sums: removes `removed` from and adds `added` to the data a
/// checksum covers.
pub fn update_sums(csum: u16, removed: u64, added: u64) -> u16 {
    let acc = u64::from(!csum) + u64::from(!fold(removed)) + u64::from(fold(added));
    !fold(acc)
}

/// Updates `csum` for a 16-bit word that changed from `old` to `new`.
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    update_sums(csum, u64::from(old), u64::from(new))
}

/// Updates `csum` for a 32-bit field (an IPv4 address) that changed from `old` to `new`.
pub fn update32(csum: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    update_sums(csum, sum(&old, 0), sum(&new, 0))
}

/// Updates `csum` for a 128-bit field (an IPv6 address) that changed from `old` to `new`.
pub fn update128(csum: u16, old: [u8; 16], new: [u8; 16]) -> u16 {
    update_sums(csum, sum(&old, 0), sum(&new, 0))
}

/// A UDP checksum as sent on the wire: a computed zero is sent as `0xffff` (RFC 768), since
/// zero means "no checksum" in IPv4.
pub fn udp_wire(csum: u16) -> u16 {
    if csum == 0 {
        0xffff
    } else {
        csum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data, 0)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn ipv4_header_example() {
        // A well-known header (Wikipedia "IPv4 header checksum"): checksum 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert!(verify(&h, 0));
        // Changing the source address incrementally matches a full recompute.
        let new_src = [10, 0, 0, 1];
        let c = update32(0xb861, [0xc0, 0xa8, 0x00, 0x01], new_src);
        h[12..16].copy_from_slice(&new_src);
        h[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(c, checksum(&h));
    }

    #[test]
    fn odd_length_and_pseudo_headers() {
        assert_eq!(fold(sum(&[0xab], 0)), 0xab00);
        assert_eq!(fold(sum(&[1, 2, 3], 0)), 0x0102 + 0x0300);
        assert_eq!(
            fold(pseudo_header_v4([1, 2, 3, 4], [5, 6, 7, 8], 17, 100)),
            0x0102 + 0x0304 + 0x0506 + 0x0708 + 17 + 100
        );
        let p6 = pseudo_header_v6([0; 16], [0; 16], 58, 0x0001_0002);
        assert_eq!(p6, 58 + 1 + 2);
        assert_eq!(udp_wire(0), 0xffff);
        assert_eq!(udp_wire(5), 5);
    }

    /// Data with a fixed non-zero word, so the sum is never all-zero (as with real headers).
    fn data_strategy() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(|mut v| {
            v.splice(0..0, [0x45, 0x00]);
            if v.len() % 2 == 1 {
                v.push(0);
            }
            v
        })
    }

    proptest! {
        /// Replacing any 16-bit word incrementally gives exactly the full recompute.
        #[test]
        fn update16_equals_recompute(data in data_strategy(), idx in any::<prop::sample::Index>(), new in any::<u16>()) {
            let mut data = data;
            data.extend_from_slice(&[0x12, 0x34]);
            let words = data.len() / 2;
            // Word 0 stays 0x4500 so the data never becomes all-zero.
            let i = 1 + idx.index(words - 1);
            let old_c = checksum(&data);
            let old = u16::from_be_bytes([data[2 * i], data[2 * i + 1]]);
            data[2 * i..2 * i + 2].copy_from_slice(&new.to_be_bytes());
            prop_assert_eq!(update16(old_c, old, new), checksum(&data));
        }

        /// Replacing a 32-bit or 128-bit field incrementally gives exactly the full recompute.
        #[test]
        fn update32_128_equal_recompute(data in data_strategy(), new4 in any::<[u8; 4]>(), new16 in any::<[u8; 16]>(), at in 0usize..100) {
            let mut data = data;
            data.resize(data.len().max(2 + 2 * at + 16), 0x11);
            let off = 2 + 2 * at;
            let c0 = checksum(&data);
            let old4: [u8; 4] = data[off..off + 4].try_into().unwrap();
            data[off..off + 4].copy_from_slice(&new4);
            let c1 = update32(c0, old4, new4);
            prop_assert_eq!(c1, checksum(&data));
            let old16: [u8; 16] = data[off..off + 16].try_into().unwrap();
            data[off..off + 16].copy_from_slice(&new16);
            prop_assert_eq!(update128(c1, old16, new16), checksum(&data));
        }

        /// A checksum written into its field always verifies.
        #[test]
        fn written_checksum_verifies(data in data_strategy()) {
            let mut data = data;
            data.extend_from_slice(&[0, 0]);
            let n = data.len();
            let c = checksum(&data);
            data[n - 2..].copy_from_slice(&c.to_be_bytes());
            prop_assert!(verify(&data, 0));
        }

        /// Summing in pieces equals summing at once (even split points).
        #[test]
        fn sums_compose(a in proptest::collection::vec(any::<u8>(), 0..64), b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut a = a;
            if a.len() % 2 == 1 { a.pop(); }
            let whole: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
            prop_assert_eq!(fold(sum(&b, sum(&a, 0))), fold(sum(&whole, 0)));
        }
    }
}
