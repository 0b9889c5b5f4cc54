//! Cryptographic primitives of the WireGuard whitepaper §5.4: HASH, HMAC, KDF1..3, MAC,
//! AEAD, XAEAD and TAI64N. Everything is over fixed-size arrays; nothing here can fail on
//! attacker-controlled lengths.

use blake2::digest::consts::U16;
use blake2::digest::Mac as _;
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use zeroize::Zeroize;

/// Noise protocol name (hashed into [`INITIAL_CHAINING_KEY`]).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// WireGuard's prologue (hashed into [`INITIAL_HASH`]).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
/// MAC1 key label.
pub(crate) const LABEL_MAC1: &[u8] = b"mac1----";
/// Cookie key label.
pub(crate) const LABEL_COOKIE: &[u8] = b"cookie--";

/// `HASH(CONSTRUCTION)`: the initial chaining key (checked in tests).
pub(crate) const INITIAL_CHAINING_KEY: [u8; 32] = [
    0x60, 0xe2, 0x6d, 0xae, 0xf3, 0x27, 0xef, 0xc0, 0x2e, 0xc3, 0x35, 0xe2, 0xa0, 0x25, 0xd2, 0xd0,
    0x16, 0xeb, 0x42, 0x06, 0xf8, 0x72, 0x77, 0xf5, 0x2d, 0x38, 0xd1, 0x98, 0x8b, 0x78, 0xcd, 0x36,
];
/// `HASH(INITIAL_CHAINING_KEY || IDENTIFIER)`: the initial handshake hash (checked in tests).
pub(crate) const INITIAL_HASH: [u8; 32] = [
    0x22, 0x11, 0xb3, 0x61, 0x08, 0x1a, 0xc5, 0x66, 0x69, 0x12, 0x43, 0xdb, 0x45, 0x8a, 0xd5, 0x32,
    0x2d, 0x9c, 0x6c, 0x66, 0x22, 0x93, 0xe8, 0xb7, 0x0e, 0xe1, 0x9c, 0x65, 0xba, 0x07, 0x9e, 0xf3,
];

/// BLAKE2s-256 over the concatenation of `parts`.
pub(crate) fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// HMAC-BLAKE2s (RFC 2104, 64-byte block) with a 32-byte key, over `parts` concatenated.
pub(crate) fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut pad = [0u8; 64];
    pad[..32].copy_from_slice(key);
    pad.iter_mut().for_each(|b| *b ^= 0x36);
    let mut inner = Blake2s256::new();
    inner.update(pad);
    for p in parts {
        inner.update(p);
    }
    let mut inner_hash: [u8; 32] = inner.finalize().into();
    // Turn the ipad key into the opad key: x ^ 0x36 ^ 0x6a == x ^ 0x5c.
    pad.iter_mut().for_each(|b| *b ^= 0x36 ^ 0x5c);
    let mut outer = Blake2s256::new();
    outer.update(pad);
    outer.update(inner_hash);
    pad.zeroize();
    inner_hash.zeroize();
    outer.finalize().into()
}

/// `KDF1(key, input)`.
pub(crate) fn kdf1(key: &[u8; 32], input: &[u8]) -> [u8; 32] {
    let mut t0 = hmac(key, &[input]);
    let t1 = hmac(&t0, &[&[1]]);
    t0.zeroize();
    t1
}

/// `KDF2(key, input)`.
pub(crate) fn kdf2(key: &[u8; 32], input: &[u8]) -> ([u8; 32], [u8; 32]) {
    let mut t0 = hmac(key, &[input]);
    let t1 = hmac(&t0, &[&[1]]);
    let t2 = hmac(&t0, &[&t1, &[2]]);
    t0.zeroize();
    (t1, t2)
}

/// `KDF3(key, input)`.
pub(crate) fn kdf3(key: &[u8; 32], input: &[u8]) -> ([u8; 32], [u8; 32], [u8; 32]) {
    let mut t0 = hmac(key, &[input]);
    let t1 = hmac(&t0, &[&[1]]);
    let t2 = hmac(&t0, &[&t1, &[2]]);
    let t3 = hmac(&t0, &[&t2, &[3]]);
    t0.zeroize();
    (t1, t2, t3)
}

/// `MAC(key, data)`: keyed BLAKE2s with a 16-byte output. `N` is 16 (cookie) or 32.
pub(crate) fn mac<const N: usize>(key: &[u8; N], data: &[u8]) -> [u8; 16] {
    const { assert!(N > 0 && N <= 32) };
    // Keys of 1..=32 bytes are always accepted by keyed BLAKE2s (checked at compile time above).
    let mut m = <Blake2sMac<U16> as blake2::digest::KeyInit>::new_from_slice(key)
        .expect("BLAKE2s key of 1..=32 bytes");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// The 96-bit ChaCha20-Poly1305 nonce for a 64-bit counter: 32 zero bits, then little-endian.
#[inline(always)]
pub(crate) fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// A ring ChaCha20-Poly1305 key.
pub(crate) fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    // `UnboundKey::new` fails only on a key length mismatch, and the length here is fixed at
    // compile time to the 32 bytes CHACHA20_POLY1305 takes.
    match UnboundKey::new(&CHACHA20_POLY1305, key) {
        Ok(k) => LessSafeKey::new(k),
        Err(_) => unreachable!("ChaCha20-Poly1305 takes 32-byte keys"),
    }
}

/// `AEAD(key, counter, plaintext, aad)` in place: encrypts `in_out` and returns the tag.
pub(crate) fn aead_seal(key: &[u8; 32], counter: u64, in_out: &mut [u8], aad: &[u8]) -> [u8; 16] {
    let k = aead_key(key);
    let mut tag = [0u8; 16];
    // Sealing only fails for inputs longer than ChaCha20's 256 GiB limit.
    if let Ok(t) = k.seal_in_place_separate_tag(nonce(counter), Aad::from(aad), in_out) {
        tag.copy_from_slice(t.as_ref());
    }
    tag
}

/// Opens `ciphertext || tag` in place; on success `in_out[..len-16]` is the plaintext.
pub(crate) fn aead_open(key: &[u8; 32], counter: u64, in_out: &mut [u8], aad: &[u8]) -> bool {
    aead_key(key)
        .open_in_place(nonce(counter), Aad::from(aad), in_out)
        .is_ok()
}

/// `XAEAD(key, nonce, plaintext, aad)` in place: encrypts `in_out`, returns the tag.
pub(crate) fn xaead_seal(
    key: &[u8; 32],
    nonce: &[u8; 24],
    in_out: &mut [u8],
    aad: &[u8],
) -> [u8; 16] {
    let c = XChaCha20Poly1305::new(key.into());
    let mut tag = [0u8; 16];
    if let Ok(t) = c.encrypt_in_place_detached(XNonce::from_slice(nonce), aad, in_out) {
        tag.copy_from_slice(&t);
    }
    tag
}

/// Opens an XAEAD ciphertext in place given its tag.
pub(crate) fn xaead_open(
    key: &[u8; 32],
    nonce: &[u8; 24],
    in_out: &mut [u8],
    tag: &[u8; 16],
    aad: &[u8],
) -> bool {
    let c = XChaCha20Poly1305::new(key.into());
    c.decrypt_in_place_detached(XNonce::from_slice(nonce), aad, in_out, tag.into())
        .is_ok()
}

/// TAI64N label of a Unix time: 8 bytes big-endian `2^62 + 10 + seconds` (the kernel's and
/// wireguard-go's base), then 4 bytes big-endian nanoseconds.
pub(crate) fn tai64n(unix_secs: u64, nanos: u32) -> [u8; 12] {
    let mut t = [0u8; 12];
    t[..8].copy_from_slice(&(0x4000_0000_0000_000a_u64.wrapping_add(unix_secs)).to_be_bytes());
    t[8..].copy_from_slice(&nanos.to_be_bytes());
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hx(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn initial_constants() {
        // Independently: python3 -c "import hashlib; print(hashlib.blake2s(b'Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s').hexdigest())"
        assert_eq!(
            hex::encode(INITIAL_CHAINING_KEY),
            "60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36"
        );
        assert_eq!(hash(&[CONSTRUCTION]), INITIAL_CHAINING_KEY);
        assert_eq!(
            hex::encode(INITIAL_HASH),
            "2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3"
        );
        assert_eq!(hash(&[&INITIAL_CHAINING_KEY, IDENTIFIER]), INITIAL_HASH);
    }

    #[test]
    fn blake2s_rfc7693_vector() {
        // RFC 7693 Appendix B: BLAKE2s-256("abc").
        assert_eq!(
            hex::encode(hash(&[b"abc"])),
            "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"
        );
        assert_eq!(hash(&[b"a", b"bc"]), hash(&[b"abc"]));
    }

    #[test]
    fn hmac_matches_rustcrypto_hmac() {
        use hmac::Mac;
        let key = [0x0b; 32];
        let mut m = <hmac::SimpleHmac<Blake2s256> as Mac>::new_from_slice(&key).unwrap();
        m.update(b"Hi There");
        let expect: [u8; 32] = m.finalize().into_bytes().into();
        assert_eq!(hmac(&key, &[b"Hi ", b"There"]), expect);
    }

    #[test]
    fn hmac_and_kdf_known_answers() {
        // From python3: hmac.new(bytes(range(32)), b"wireguard", hashlib.blake2s), and the
        // whitepaper's KDF chain over it.
        let key: [u8; 32] = core::array::from_fn(|i| i as u8);
        assert_eq!(
            hex::encode(hmac(&key, &[b"wireguard"])),
            "856f1b248b4d5a741767b3242d3d7a3474e4c3ff1681af8bdd10d7fb6b428d1f"
        );
        let (a, b, c) = kdf3(&key, b"wireguard");
        assert_eq!(kdf1(&key, b"wireguard"), a);
        assert_eq!(kdf2(&key, b"wireguard"), (a, b));
        assert_eq!(
            [hex::encode(a), hex::encode(b), hex::encode(c)],
            [
                "a011c5c91070042675cfd928591ae86bc328db3401844dfe636849847b77f12f",
                "789a16a3efc975932db7ca3493d2e555a0d50821d160f686eb4caf578fa14e83",
                "f886b70b72ba2b331d8d568f66bd5d8b319afea67c488688c7d371b3b4cc1655",
            ]
        );
    }

    #[test]
    fn keyed_mac_known_answer() {
        // python3: hashlib.blake2s(b"wireguard", digest_size=16, key=bytes(range(32)))
        let key: [u8; 32] = core::array::from_fn(|i| i as u8);
        assert_eq!(
            hex::encode(mac(&key, b"wireguard")),
            "a61558c1c840ba642e30ae5887ea786d"
        );
    }

    #[test]
    fn aead_rfc8439_vector() {
        // RFC 8439 §2.8.2.
        let key: [u8; 32] = hx("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
            .try_into()
            .unwrap();
        let aad = hx("50515253c0c1c2c3c4c5c6c7");
        let n = hx("070000004041424344454647");
        let pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let k = aead_key(&key);
        let mut buf = pt.to_vec();
        let tag = k
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(n.try_into().unwrap()),
                Aad::from(&aad),
                &mut buf,
            )
            .unwrap();
        assert_eq!(
            hex::encode(tag.as_ref()),
            "1ae10b594f09e26a7e902ecbd0600691"
        );
        assert_eq!(hex::encode(&buf[..16]), "d31a8d34648e60db7b86afbc53ef7ec2");
    }

    #[test]
    fn aead_round_trip_and_nonce_layout() {
        let key = [7u8; 32];
        let mut buf = *b"0123456789abcdef________________";
        let tag = aead_seal(&key, 0x0102, &mut buf[..16], b"ad");
        buf[16..].copy_from_slice(&tag);
        let mut tampered = buf;
        assert!(aead_open(&key, 0x0102, &mut buf, b"ad"));
        assert_eq!(&buf[..16], b"0123456789abcdef");
        assert!(!aead_open(&key, 0x0103, &mut tampered, b"ad"));
    }

    #[test]
    fn xaead_draft_vector() {
        // draft-irtf-cfrg-xchacha-03 §A.3.1.
        let key: [u8; 32] = hx("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
            .try_into()
            .unwrap();
        let n: [u8; 24] = hx("404142434445464748494a4b4c4d4e4f5051525354555657")
            .try_into()
            .unwrap();
        let aad = hx("50515253c0c1c2c3c4c5c6c7");
        let mut buf = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".to_vec();
        let tag = xaead_seal(&key, &n, &mut buf, &aad);
        assert_eq!(hex::encode(tag), "c0875924c1c7987947deafd8780acf49");
        assert_eq!(hex::encode(&buf[..16]), "bd6d179d3e83d43b9576579493c0e939");
        assert!(xaead_open(&key, &n, &mut buf, &tag, &aad));
        assert!(buf.starts_with(b"Ladies"));
    }

    #[test]
    fn tai64n_encoding() {
        // 2023-11-14T22:13:20.123456789Z
        assert_eq!(
            hex::encode(tai64n(1_700_000_000, 123_456_789)),
            "400000006553f10a075bcd15"
        );
        assert_eq!(hex::encode(tai64n(0, 0)), "400000000000000a00000000");
        assert!(tai64n(10, 0) > tai64n(9, 999_999_999));
    }
}
