//! The relay handshake's proof of key possession.
//!
//! The server's first frame carries its public key and a fresh challenge. The client answers
//! with its node key and a small JSON document sealed with XChaCha20-Poly1305 under a key
//! derived from the Curve25519 shared secret of the two keys, the challenge as associated
//! data. Only the holder of the node key's private half (and of the server's) can produce or
//! open it, so nobody can register under someone else's key, and a recorded handshake cannot
//! be replayed against another challenge. The server answers with its own sealed info, which
//! proves to the client that it talks to the holder of the server key.

use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

use super::frame::{NodeKey, CHALLENGE_LEN, NONCE_LEN};
use crate::wg::crypto::{hash, xaead_open, xaead_seal};

/// Protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// What the client tells the server (sealed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The client's protocol version.
    pub version: u32,
    /// The region's mesh secret, sent only by other relay servers of the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_key: Option<String>,
}

/// What the server tells the client (sealed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The server's protocol version.
    pub version: u32,
    /// The sustained rate the server accepts from this client, bytes per second (0 = none).
    pub rate_limit_bytes_per_sec: u64,
    /// The burst the server allows above that rate, bytes.
    pub rate_limit_burst_bytes: u64,
}

/// Why a handshake message could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The peer's key is a low-order point (no shared secret).
    #[error("the key is not a valid Curve25519 public key")]
    WeakKey,
    /// Authentication failed: wrong key, wrong challenge or tampered bytes.
    #[error("the sealed handshake does not open with this key and challenge")]
    BadSeal,
    /// It opened but is not the expected JSON.
    #[error("the handshake info is malformed: {0}")]
    BadInfo(String),
}

/// The direction a sealed message travels, which selects its key.
#[derive(Clone, Copy)]
enum Direction {
    ClientToServer,
    ServerToClient,
}

/// Which end of the handshake a node is.
#[derive(Clone, Copy)]
enum Role {
    Client,
    Server,
}

/// The key sealing messages in `dir` between `own` (playing `role`) and `peer`.
fn seal_key(
    own: &StaticSecret,
    peer: &NodeKey,
    role: Role,
    dir: Direction,
) -> Result<[u8; 32], AuthError> {
    let own_pub = PublicKey::from(own).to_bytes();
    let (server, client) = match role {
        Role::Server => (&own_pub, peer),
        Role::Client => (peer, &own_pub),
    };
    let shared = own.diffie_hellman(&PublicKey::from(*peer));
    if !shared.was_contributory() {
        return Err(AuthError::WeakKey);
    }
    let label: &[u8] = match dir {
        Direction::ClientToServer => b"tailgate relay client info v1",
        Direction::ServerToClient => b"tailgate relay server info v1",
    };
    Ok(hash(&[label, shared.as_bytes(), server, client]))
}

fn seal<T: Serialize>(key: &[u8; 32], challenge: &[u8], info: &T) -> ([u8; NONCE_LEN], Vec<u8>) {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let mut body = serde_json::to_vec(info).expect("handshake info serialises");
    let tag = xaead_seal(key, &nonce, &mut body, challenge);
    body.extend_from_slice(&tag);
    (nonce, body)
}

fn open<T: for<'de> Deserialize<'de>>(
    key: &[u8; 32],
    challenge: &[u8],
    nonce: &[u8; NONCE_LEN],
    sealed: &[u8],
) -> Result<T, AuthError> {
    if sealed.len() < 16 {
        return Err(AuthError::BadSeal);
    }
    let (body, tag) = sealed.split_at(sealed.len() - 16);
    let mut body = body.to_vec();
    let tag: [u8; 16] = tag.try_into().expect("16 bytes");
    if !xaead_open(key, nonce, &mut body, &tag, challenge) {
        return Err(AuthError::BadSeal);
    }
    serde_json::from_slice(&body).map_err(|e| AuthError::BadInfo(e.to_string()))
}

/// Client side: seals `info` for the server `server_key`, bound to `challenge`.
pub fn seal_client_info(
    client: &StaticSecret,
    server_key: &NodeKey,
    challenge: &[u8; CHALLENGE_LEN],
    info: &ClientInfo,
) -> Result<([u8; NONCE_LEN], Vec<u8>), AuthError> {
    let key = seal_key(client, server_key, Role::Client, Direction::ClientToServer)?;
    Ok(seal(&key, challenge, info))
}

/// Server side: opens a client's info; success proves the client holds `client_key`'s
/// private half.
pub fn open_client_info(
    server: &StaticSecret,
    client_key: &NodeKey,
    challenge: &[u8; CHALLENGE_LEN],
    nonce: &[u8; NONCE_LEN],
    sealed: &[u8],
) -> Result<ClientInfo, AuthError> {
    let key = seal_key(server, client_key, Role::Server, Direction::ClientToServer)?;
    open(&key, challenge, nonce, sealed)
}

/// Server side: seals the server's info for the client `client_key`.
pub fn seal_server_info(
    server: &StaticSecret,
    client_key: &NodeKey,
    challenge: &[u8; CHALLENGE_LEN],
    info: &ServerInfo,
) -> Result<([u8; NONCE_LEN], Vec<u8>), AuthError> {
    let key = seal_key(server, client_key, Role::Server, Direction::ServerToClient)?;
    Ok(seal(&key, challenge, info))
}

/// Client side: opens the server's info; success proves the server holds `server_key`.
pub fn open_server_info(
    client: &StaticSecret,
    server_key: &NodeKey,
    challenge: &[u8; CHALLENGE_LEN],
    nonce: &[u8; NONCE_LEN],
    sealed: &[u8],
) -> Result<ServerInfo, AuthError> {
    let key = seal_key(client, server_key, Role::Client, Direction::ServerToClient)?;
    open(&key, challenge, nonce, sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair() -> (StaticSecret, NodeKey) {
        let s = StaticSecret::random_from_rng(OsRng);
        let p = PublicKey::from(&s).to_bytes();
        (s, p)
    }

    #[test]
    fn both_sides_open_what_the_other_sealed() {
        let (server, server_pub) = keypair();
        let (client, client_pub) = keypair();
        let challenge = [5u8; CHALLENGE_LEN];
        let info = ClientInfo {
            version: PROTOCOL_VERSION,
            mesh_key: Some("secret".into()),
        };
        let (nonce, sealed) = seal_client_info(&client, &server_pub, &challenge, &info).unwrap();
        assert_eq!(
            open_client_info(&server, &client_pub, &challenge, &nonce, &sealed).unwrap(),
            info
        );
        let sinfo = ServerInfo {
            version: 1,
            rate_limit_bytes_per_sec: 10,
            rate_limit_burst_bytes: 20,
        };
        let (nonce, sealed) = seal_server_info(&server, &client_pub, &challenge, &sinfo).unwrap();
        assert_eq!(
            open_server_info(&client, &server_pub, &challenge, &nonce, &sealed).unwrap(),
            sinfo
        );
    }

    #[test]
    fn claiming_another_key_or_replaying_fails() {
        let (server, server_pub) = keypair();
        let (client, _) = keypair();
        let (_, victim_pub) = keypair();
        let challenge = [1u8; CHALLENGE_LEN];
        let (nonce, sealed) =
            seal_client_info(&client, &server_pub, &challenge, &ClientInfo::default()).unwrap();
        // Someone else's key with our seal.
        assert_eq!(
            open_client_info(&server, &victim_pub, &challenge, &nonce, &sealed),
            Err(AuthError::BadSeal)
        );
        // A replay against a fresh challenge.
        let client_pub = PublicKey::from(&client).to_bytes();
        assert_eq!(
            open_client_info(&server, &client_pub, &[2; CHALLENGE_LEN], &nonce, &sealed),
            Err(AuthError::BadSeal)
        );
        // A server-to-client seal is not a client info.
        let (n2, s2) =
            seal_server_info(&server, &client_pub, &challenge, &ServerInfo::default()).unwrap();
        assert_eq!(
            open_client_info(&server, &client_pub, &challenge, &n2, &s2),
            Err(AuthError::BadSeal)
        );
        // The all-zero key has no shared secret.
        assert_eq!(
            open_client_info(&server, &[0; 32], &challenge, &nonce, &sealed),
            Err(AuthError::WeakKey)
        );
    }
}
