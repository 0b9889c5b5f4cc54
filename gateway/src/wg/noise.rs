//! The Noise_IKpsk2 handshake (whitepaper §5.4.2–§5.4.5) as pure functions over messages.
//!
//! Callers supply ephemeral keys, timestamps and indices, so the handshake is deterministic
//! under test. Intermediate secrets are wiped when they go out of scope.

use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroize;

use super::cookie::{cookie_key, mac1_key};
use super::crypto::{
    aead_open, aead_seal, hash, kdf1, kdf2, kdf3, INITIAL_CHAINING_KEY, INITIAL_HASH,
};
use super::error::WgError;
use super::keys::{ct_eq, Key};
use super::messages::{
    HandshakeInit, HandshakeResponse, MessageType, HANDSHAKE_INIT_LEN, HANDSHAKE_RESPONSE_LEN,
    INIT_EPHEMERAL, INIT_SENDER, INIT_STATIC, INIT_TIMESTAMP, RESP_EMPTY, RESP_EPHEMERAL,
    RESP_RECEIVER, RESP_SENDER,
};

/// Our static key pair with its precomputed handshake hash.
pub(crate) struct LocalStatic {
    pub(crate) secret: StaticSecret,
    pub(crate) public: Key,
    /// `HASH(INITIAL_HASH || S_pub)`: the responder's hash after the pre-message.
    hash0: [u8; 32],
}

impl LocalStatic {
    pub(crate) fn new(private: &Key) -> Self {
        let secret = StaticSecret::from(*private.as_bytes());
        let public = Key::from_bytes(PublicKey::from(&secret).to_bytes());
        LocalStatic {
            hash0: hash(&[&INITIAL_HASH, public.as_bytes()]),
            secret,
            public,
        }
    }
}

/// Everything precomputed about a peer's static key.
pub(crate) struct PeerStatic {
    pub(crate) public: Key,
    x_public: PublicKey,
    /// `HASH(INITIAL_HASH || S_pub_peer)`: the initiator's hash after the pre-message.
    hash0: [u8; 32],
    /// Key of MAC1 on messages we send to the peer.
    pub(crate) mac1_key: [u8; 32],
    /// Key of cookie replies the peer sends us.
    pub(crate) cookie_key: [u8; 32],
    /// `DH(S_priv, S_pub_peer)`, `None` if it is all zero (a low-order peer key).
    static_static: Option<[u8; 32]>,
}

impl Drop for PeerStatic {
    fn drop(&mut self) {
        self.static_static.zeroize();
    }
}

impl PeerStatic {
    pub(crate) fn new(local: &LocalStatic, public: Key) -> Self {
        let x_public = PublicKey::from(*public.as_bytes());
        let ss = local.secret.diffie_hellman(&x_public);
        PeerStatic {
            hash0: hash(&[&INITIAL_HASH, public.as_bytes()]),
            mac1_key: mac1_key(&public),
            cookie_key: cookie_key(&public),
            static_static: ss.was_contributory().then(|| ss.to_bytes()),
            x_public,
            public,
        }
    }
}

/// Initiator state between sending an initiation and receiving the response.
pub(crate) struct InitiatorState {
    pub(crate) local_index: u32,
    ephemeral: StaticSecret,
    ck: [u8; 32],
    h: [u8; 32],
}

/// Keys derived by a completed handshake.
pub(crate) struct TransportKeys {
    pub(crate) send: [u8; 32],
    pub(crate) recv: [u8; 32],
    pub(crate) remote_index: u32,
}

/// An initiation after decrypting the initiator's static key (no state changed yet).
pub(crate) struct HalfInit {
    pub(crate) peer_static: Key,
    ck: [u8; 32],
    h: [u8; 32],
}

/// A fully verified initiation, ready to be answered.
pub(crate) struct ConsumedInit {
    pub(crate) remote_index: u32,
    remote_ephemeral: PublicKey,
    /// The decrypted TAI64N timestamp (replay protection is the caller's job).
    pub(crate) timestamp: [u8; 12],
    ck: [u8; 32],
    h: [u8; 32],
}

macro_rules! wipe_on_drop {
    ($($t:ty => $($f:ident),+;)+) => {$(
        impl Drop for $t {
            fn drop(&mut self) {
                $(self.$f.zeroize();)+
            }
        }
    )+};
}

// (StaticSecret wipes itself.)
wipe_on_drop! {
    InitiatorState => ck, h;
    TransportKeys => send, recv;
    HalfInit => ck, h;
    ConsumedInit => ck, h;
}

/// `DH(a, B)`, refusing all-zero (non-contributory) results.
fn dh(secret: &StaticSecret, public: &PublicKey) -> Result<[u8; 32], WgError> {
    let s = secret.diffie_hellman(public);
    if s.was_contributory() {
        Ok(s.to_bytes())
    } else {
        Err(WgError::WeakKey)
    }
}

/// Writes a handshake initiation into `out` (MAC1/MAC2 left zero for the caller to stamp).
pub(crate) fn create_initiation(
    local: &LocalStatic,
    peer: &PeerStatic,
    local_index: u32,
    ephemeral: StaticSecret,
    timestamp: &[u8; 12],
    out: &mut [u8; HANDSHAKE_INIT_LEN],
) -> Result<InitiatorState, WgError> {
    let ss = peer.static_static.as_ref().ok_or(WgError::WeakKey)?;
    let e_pub = PublicKey::from(&ephemeral).to_bytes();
    let mut ck = kdf1(&INITIAL_CHAINING_KEY, &e_pub);
    let mut h = hash(&[&peer.hash0, &e_pub]);
    let mut es = dh(&ephemeral, &peer.x_public)?;
    let (ck1, mut k) = kdf2(&ck, &es);
    es.zeroize();
    ck = ck1;

    out.fill(0);
    out[0..4].copy_from_slice(&MessageType::HandshakeInit.header());
    out[INIT_SENDER..INIT_SENDER + 4].copy_from_slice(&local_index.to_le_bytes());
    out[INIT_EPHEMERAL..INIT_EPHEMERAL + 32].copy_from_slice(&e_pub);

    let st = &mut out[INIT_STATIC..INIT_STATIC + 48];
    st[..32].copy_from_slice(local.public.as_bytes());
    let tag = aead_seal(&k, 0, &mut st[..32], &h);
    st[32..].copy_from_slice(&tag);
    h = hash(&[&h, st]);

    let (ck2, k2) = kdf2(&ck, ss);
    ck = ck2;
    k.zeroize();
    k = k2;
    let ts = &mut out[INIT_TIMESTAMP..INIT_TIMESTAMP + 28];
    ts[..12].copy_from_slice(timestamp);
    let tag = aead_seal(&k, 0, &mut ts[..12], &h);
    ts[12..].copy_from_slice(&tag);
    h = hash(&[&h, ts]);
    k.zeroize();

    Ok(InitiatorState {
        local_index,
        ephemeral,
        ck,
        h,
    })
}

/// Decrypts the initiator's static key of an initiation addressed to `local`.
/// Changes no state: the device uses this to find the peer.
pub(crate) fn decrypt_initiator_static(
    local: &LocalStatic,
    msg: &HandshakeInit<'_>,
) -> Result<HalfInit, WgError> {
    let e_i = PublicKey::from(*msg.unencrypted_ephemeral);
    let ck = kdf1(&INITIAL_CHAINING_KEY, msg.unencrypted_ephemeral);
    let h = hash(&[&local.hash0, msg.unencrypted_ephemeral]);
    let mut es = dh(&local.secret, &e_i)?;
    let (ck, mut k) = kdf2(&ck, &es);
    es.zeroize();
    let mut buf = *msg.encrypted_static;
    let ok = aead_open(&k, 0, &mut buf, &h);
    k.zeroize();
    if !ok {
        return Err(WgError::DecryptionFailed);
    }
    let mut s = [0u8; 32];
    s.copy_from_slice(&buf[..32]);
    let h = hash(&[&h, msg.encrypted_static]);
    Ok(HalfInit {
        peer_static: Key::from_bytes(s),
        ck,
        h,
    })
}

/// Finishes consuming an initiation from `peer`: decrypts and returns the timestamp.
pub(crate) fn finish_initiation(
    half: HalfInit,
    peer: &PeerStatic,
    msg: &HandshakeInit<'_>,
) -> Result<ConsumedInit, WgError> {
    if !ct_eq(half.peer_static.as_bytes(), peer.public.as_bytes()) {
        return Err(WgError::WrongPeer);
    }
    let ss = peer.static_static.as_ref().ok_or(WgError::WeakKey)?;
    let (ck, mut k) = kdf2(&half.ck, ss);
    let mut buf = *msg.encrypted_timestamp;
    let ok = aead_open(&k, 0, &mut buf, &half.h);
    k.zeroize();
    if !ok {
        return Err(WgError::DecryptionFailed);
    }
    let mut timestamp = [0u8; 12];
    timestamp.copy_from_slice(&buf[..12]);
    Ok(ConsumedInit {
        remote_index: msg.sender_index,
        remote_ephemeral: PublicKey::from(*msg.unencrypted_ephemeral),
        timestamp,
        h: hash(&[&half.h, msg.encrypted_timestamp]),
        ck,
    })
}

/// Writes the response to a consumed initiation into `out` (MACs left zero) and returns the
/// responder's transport keys.
pub(crate) fn create_response(
    init: &ConsumedInit,
    peer: &PeerStatic,
    local_index: u32,
    ephemeral: StaticSecret,
    psk: &[u8; 32],
    out: &mut [u8; HANDSHAKE_RESPONSE_LEN],
) -> Result<TransportKeys, WgError> {
    let e_pub = PublicKey::from(&ephemeral).to_bytes();
    let mut ck = kdf1(&init.ck, &e_pub);
    let mut h = hash(&[&init.h, &e_pub]);
    let mut ee = dh(&ephemeral, &init.remote_ephemeral)?;
    ck = kdf1(&ck, &ee);
    ee.zeroize();
    let mut se = dh(&ephemeral, &peer.x_public)?;
    ck = kdf1(&ck, &se);
    se.zeroize();
    let (ck3, mut tau, mut k) = kdf3(&ck, psk);
    ck = ck3;
    h = hash(&[&h, &tau]);
    tau.zeroize();

    out.fill(0);
    out[0..4].copy_from_slice(&MessageType::HandshakeResponse.header());
    out[RESP_SENDER..RESP_SENDER + 4].copy_from_slice(&local_index.to_le_bytes());
    out[RESP_RECEIVER..RESP_RECEIVER + 4].copy_from_slice(&init.remote_index.to_le_bytes());
    out[RESP_EPHEMERAL..RESP_EPHEMERAL + 32].copy_from_slice(&e_pub);
    let tag = aead_seal(&k, 0, &mut [], &h);
    k.zeroize();
    out[RESP_EMPTY..RESP_EMPTY + 16].copy_from_slice(&tag);

    let (recv, send) = kdf2(&ck, &[]);
    ck.zeroize();
    Ok(TransportKeys {
        send,
        recv,
        remote_index: init.remote_index,
    })
}

/// Consumes the response to our initiation and returns the initiator's transport keys.
/// `state` is untouched, so a forged response does not kill the handshake in flight.
pub(crate) fn consume_response(
    state: &InitiatorState,
    local: &LocalStatic,
    msg: &HandshakeResponse<'_>,
    psk: &[u8; 32],
) -> Result<TransportKeys, WgError> {
    if msg.receiver_index != state.local_index {
        return Err(WgError::UnexpectedPacket);
    }
    let e_r = PublicKey::from(*msg.unencrypted_ephemeral);
    let mut ck = kdf1(&state.ck, msg.unencrypted_ephemeral);
    let mut h = hash(&[&state.h, msg.unencrypted_ephemeral]);
    let mut ee = dh(&state.ephemeral, &e_r)?;
    ck = kdf1(&ck, &ee);
    ee.zeroize();
    let mut se = dh(&local.secret, &e_r)?;
    ck = kdf1(&ck, &se);
    se.zeroize();
    let (ck3, mut tau, mut k) = kdf3(&ck, psk);
    ck = ck3;
    h = hash(&[&h, &tau]);
    tau.zeroize();
    let mut tag = *msg.encrypted_nothing;
    let ok = aead_open(&k, 0, &mut tag, &h);
    k.zeroize();
    if !ok {
        ck.zeroize();
        return Err(WgError::DecryptionFailed);
    }
    let (send, recv) = kdf2(&ck, &[]);
    ck.zeroize();
    Ok(TransportKeys {
        send,
        recv,
        remote_index: msg.sender_index,
    })
}
