#!/usr/bin/env python3
"""Independent reference for the known-answer vectors in ../vectors.rs.

Written from the WireGuard whitepaper (section 5.4) only, with Python's hashlib/hmac and the
`cryptography` package (X25519, ChaCha20-Poly1305; XChaCha20 via a local HChaCha20). It shares
no code with the Rust implementation. Run: python3 gen_vectors.py
"""
import hashlib
import hmac
import struct

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives import serialization

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"


def HASH(*parts):
    return hashlib.blake2s(b"".join(parts)).digest()


def HMAC(key, data):
    return hmac.new(key, data, hashlib.blake2s).digest()


def KDF(n, key, inp):
    t0 = HMAC(key, inp)
    out, prev = [], b""
    for i in range(1, n + 1):
        prev = HMAC(t0, prev + bytes([i]))
        out.append(prev)
    return out


def MAC(key, data):
    return hashlib.blake2s(data, digest_size=16, key=key).digest()


def AEAD(key, counter, pt, ad):
    return ChaCha20Poly1305(key).encrypt(b"\0" * 4 + struct.pack("<Q", counter), pt, ad)


def rotl(v, c):
    return ((v << c) & 0xFFFFFFFF) | (v >> (32 - c))


def qr(s, a, b, c, d):
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = rotl(s[b] ^ s[c], 7)


def hchacha20(key, nonce16):
    s = list(struct.unpack("<4I", b"expand 32-byte k")) + list(struct.unpack("<8I", key)) + list(struct.unpack("<4I", nonce16))
    for _ in range(10):
        qr(s, 0, 4, 8, 12); qr(s, 1, 5, 9, 13); qr(s, 2, 6, 10, 14); qr(s, 3, 7, 11, 15)
        qr(s, 0, 5, 10, 15); qr(s, 1, 6, 11, 12); qr(s, 2, 7, 8, 13); qr(s, 3, 4, 9, 14)
    return struct.pack("<8I", *(s[0:4] + s[12:16]))


def XAEAD(key, nonce24, pt, ad):
    sub = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(sub).encrypt(b"\0" * 4 + nonce24[16:], pt, ad)


def pub(priv):
    return X25519PrivateKey.from_private_bytes(priv).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def DH(priv, pubkey):
    return X25519PrivateKey.from_private_bytes(priv).exchange(X25519PublicKey.from_public_bytes(pubkey))


def tai64n(secs, nanos):
    return struct.pack(">QI", (1 << 62) + 10 + secs, nanos)


def handshake(psk):
    si, sr = HASH(b"initiator static"), HASH(b"responder static")
    ei, er = HASH(b"initiator ephemeral"), HASH(b"responder ephemeral")
    Si, Sr, Ei, Er = pub(si), pub(sr), pub(ei), pub(er)
    idx_i, idx_r = 0x0A0B0C01, 0x00112233
    ts = tai64n(1_700_000_000, 0x07000000)

    # Initiation (5.4.2).
    C = HASH(CONSTRUCTION)
    H = HASH(HASH(C, IDENTIFIER), Sr)
    C = KDF(1, C, Ei)[0]
    H = HASH(H, Ei)
    C, k = KDF(2, C, DH(ei, Sr))
    enc_static = AEAD(k, 0, Si, H)
    H = HASH(H, enc_static)
    C, k = KDF(2, C, DH(si, Sr))
    enc_ts = AEAD(k, 0, ts, H)
    H = HASH(H, enc_ts)
    init = struct.pack("<I", 1) + struct.pack("<I", idx_i) + Ei + enc_static + enc_ts
    init += MAC(HASH(b"mac1----", Sr), init) + b"\0" * 16

    # Response (5.4.3).
    C = KDF(1, C, Er)[0]
    H = HASH(H, Er)
    C = KDF(1, C, DH(er, Ei))[0]
    C = KDF(1, C, DH(er, Si))[0]
    C, tau, k = KDF(3, C, psk)
    H = HASH(H, tau)
    enc_empty = AEAD(k, 0, b"", H)
    H = HASH(H, enc_empty)
    resp = struct.pack("<I", 2) + struct.pack("<I", idx_r) + struct.pack("<I", idx_i) + Er + enc_empty
    resp += MAC(HASH(b"mac1----", Si), resp) + b"\0" * 16

    # Transport keys (5.4.5) and one data message each way (5.4.6).
    t_send_i, t_recv_i = KDF(2, C, b"")
    ip = bytes.fromhex("4500001900000000401100000a0000010a000002") + b"hello"
    padded = ip + b"\0" * (-len(ip) % 16)
    data_i = struct.pack("<IIQ", 4, idx_r, 0) + AEAD(t_send_i, 0, padded, b"")
    keepalive_r = struct.pack("<IIQ", 4, idx_i, 0) + AEAD(t_recv_i, 0, b"", b"")
    return dict(si=si, sr=sr, ei=ei, er=er, psk=psk, init=init, resp=resp, t_send_i=t_send_i,
                t_recv_i=t_recv_i, data_i=data_i, keepalive_r=keepalive_r, Sr=Sr)


def cookie(v):
    # Cookie reply (5.4.7) to the initiation above, sent by the responder.
    secret = HASH(b"cookie secret")
    src = bytes([192, 0, 2, 1]) + struct.pack(">H", 51820)
    tau = MAC(secret, src)
    nonce = bytes(range(24))
    init = v["init"]
    mac1 = init[116:132]
    reply = struct.pack("<I", 3) + init[4:8] + nonce + XAEAD(HASH(b"cookie--", v["Sr"]), nonce, tau, mac1)
    mac2 = MAC(tau, init[:132])
    return dict(secret=secret, tau=tau, reply=reply, mac2=mac2)


def rust(name, b):
    return f'pub(super) const {name}: &str = "{b.hex()}";'


if __name__ == "__main__":
    no_psk = handshake(b"\0" * 32)
    with_psk = handshake(HASH(b"preshared"))
    for k in ["si", "sr", "ei", "er"]:
        print(rust(k.upper(), no_psk[k]))
    print(rust("PSK", with_psk["psk"]))
    for prefix, v in [("", no_psk), ("PSK_", with_psk)]:
        for k in ["init", "resp", "t_send_i", "t_recv_i", "data_i", "keepalive_r"]:
            print(rust(prefix + k.upper(), v[k]))
    c = cookie(no_psk)
    for k in ["secret", "tau", "reply", "mac2"]:
        print(rust("COOKIE_" + k.upper(), c[k]))
