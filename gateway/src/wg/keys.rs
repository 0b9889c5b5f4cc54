//! 32-byte Curve25519 keys and pre-shared keys, with the text encodings WireGuard tools use.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand_core::{OsRng, RngCore};
use zeroize::Zeroize;

/// Length of every WireGuard key in bytes.
pub const KEY_LEN: usize = 32;

/// A 32-byte key: a Curve25519 private or public key, or a pre-shared key.
///
/// Text forms: base64 (`wg genkey`, config files) and lowercase hex (the wg UAPI).
/// `Debug` never shows the bytes; equality is constant-time. The type is `Copy` for ease of
/// use in configuration; the protocol keeps its long-lived secrets in zeroizing types, and
/// holders of a private `Key` may wipe it with [`Zeroize`].
#[derive(Clone, Copy, Default)]
pub struct Key([u8; KEY_LEN]);

/// Why a key could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not valid (padded, standard alphabet) base64.
    #[error("bad base64")]
    BadBase64,
    /// Not valid hex.
    #[error("bad hex")]
    BadHex,
    /// Decoded fine, but to the wrong number of bytes.
    #[error("wrong length: {0} bytes, expected 32")]
    WrongLength(usize),
}

impl Key {
    /// Wraps raw bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        Key(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Decodes standard padded base64 (44 characters); surrounding whitespace is ignored.
    pub fn from_base64(s: &str) -> Result<Key, KeyError> {
        let mut v = STANDARD.decode(s.trim()).map_err(|_| KeyError::BadBase64)?;
        let r = to_key(&v);
        v.zeroize();
        r
    }

    /// Standard padded base64, as printed by `wg genkey` / `wg pubkey`.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Decodes 64 hex digits (either case); surrounding whitespace is ignored.
    pub fn from_hex(s: &str) -> Result<Key, KeyError> {
        let s = s.trim().as_bytes();
        if s.len() & 1 != 0 {
            return Err(KeyError::BadHex);
        }
        if s.len() != 2 * KEY_LEN {
            if s.iter().all(u8::is_ascii_hexdigit) {
                return Err(KeyError::WrongLength(s.len() / 2));
            }
            return Err(KeyError::BadHex);
        }
        let mut out = [0u8; KEY_LEN];
        for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
            let (Some(hi), Some(lo)) = (hex_val(pair[0]), hex_val(pair[1])) else {
                out.zeroize();
                return Err(KeyError::BadHex);
            };
            *o = (hi << 4) | lo;
        }
        Ok(Key(out))
    }

    /// Lowercase hex, as the wg UAPI (`wg set` / `wg show` over the socket) uses.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(2 * KEY_LEN);
        for b in self.0 {
            s.push(DIGITS[usize::from(b >> 4)] as char);
            s.push(DIGITS[usize::from(b & 0xf)] as char);
        }
        s
    }

    /// A new random, clamped Curve25519 private key (`wg genkey`).
    pub fn generate_private() -> Key {
        let mut b = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut b);
        b[0] &= 248;
        b[31] &= 127;
        b[31] |= 64;
        Key(b)
    }

    /// A new random pre-shared key (`wg genpsk`).
    pub fn generate_preshared() -> Key {
        let mut b = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut b);
        Key(b)
    }

    /// The public key of this private key (`wg pubkey`). Clamping is applied, so unclamped
    /// private keys give the same result as the kernel.
    pub fn public_from_private(&self) -> Key {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        Key(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }

    /// Alias of [`Key::public_from_private`].
    pub fn public_key(&self) -> Key {
        self.public_from_private()
    }

    /// True for the all-zero key (the UAPI's "no key").
    pub fn is_zero(&self) -> bool {
        self.0.iter().fold(0u8, |acc, b| acc | b) == 0
    }

    /// The first 8 base64 characters, for logs. Only use this on public keys.
    pub fn short(&self) -> String {
        let mut s = self.to_base64();
        s.truncate(8);
        s
    }
}

fn to_key(v: &[u8]) -> Result<Key, KeyError> {
    let arr: [u8; KEY_LEN] = v.try_into().map_err(|_| KeyError::WrongLength(v.len()))?;
    Ok(Key(arr))
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Constant-time equality of two byte arrays.
pub(crate) fn ct_eq<const N: usize>(a: &[u8; N], b: &[u8; N]) -> bool {
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early-exit compare.
    std::hint::black_box(diff) == 0
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl FromStr for Key {
    type Err = KeyError;
    /// Parses base64.
    fn from_str(s: &str) -> Result<Key, KeyError> {
        Key::from_base64(s)
    }
}

impl From<[u8; KEY_LEN]> for Key {
    fn from(b: [u8; KEY_LEN]) -> Key {
        Key(b)
    }
}

impl Zeroize for Key {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_and_errors() {
        let k = Key::generate_private();
        assert_eq!(Key::from_base64(&k.to_base64()).unwrap(), k);
        assert_eq!(
            Key::from_base64(&format!(" {}\n", k.to_base64())).unwrap(),
            k
        );
        assert_eq!(
            Key::from_base64("abc").unwrap_err().to_string(),
            "bad base64"
        );
        assert_eq!(
            Key::from_base64("not base64!!").unwrap_err(),
            KeyError::BadBase64
        );
        assert_eq!(
            Key::from_base64("AAAA").unwrap_err().to_string(),
            "wrong length: 3 bytes, expected 32"
        );
        assert_eq!("AAAA".parse::<Key>().unwrap_err(), KeyError::WrongLength(3));
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let k = Key::generate_preshared();
        let h = k.to_hex();
        assert_eq!(h.len(), 64);
        assert_eq!(Key::from_hex(&h).unwrap(), k);
        assert_eq!(Key::from_hex(&h.to_uppercase()).unwrap(), k);
        assert_eq!(Key::from_hex("abc").unwrap_err(), KeyError::BadHex);
        assert_eq!(Key::from_hex("abcd").unwrap_err(), KeyError::WrongLength(2));
        assert_eq!(
            Key::from_hex(&"zz".repeat(32)).unwrap_err(),
            KeyError::BadHex
        );
        assert!(Key::from_hex(&"0".repeat(64)).unwrap().is_zero());
    }

    #[test]
    fn generated_private_keys_are_clamped() {
        let k = Key::generate_private();
        assert_eq!(k.as_bytes()[0] & 7, 0);
        assert_eq!(k.as_bytes()[31] & 0xc0, 0x40);
        assert!(!k.is_zero());
    }

    #[test]
    fn public_key_matches_rfc7748() {
        // RFC 7748 §6.1: Alice's private and public key.
        let alice =
            Key::from_hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap();
        assert_eq!(
            alice.public_key().to_hex(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn public_key_matches_wg_pubkey() {
        // `echo <private> | wg pubkey` (wireguard-tools 1.0.20210914).
        for (private, public) in [
            (
                "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=",
                "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=",
            ),
            (
                "GHZ2tLEFYPzP2w23TWAKvX34hL/yymEcCU3a9mzQqmc=",
                "WZEdmZvgGFra2lZpmYR3PQsP4xsSuqJe+zBSMFrDuTQ=",
            ),
        ] {
            assert_eq!(
                Key::from_base64(private).unwrap().public_key().to_base64(),
                public
            );
        }
    }

    #[test]
    fn debug_does_not_leak() {
        let k = Key::from_bytes([0xab; 32]);
        let d = format!("{k:?}");
        assert!(!d.contains("ab") && !d.contains("171"), "{d}");
        assert!(!d.contains(&k.to_base64()[..8]));
    }
}
