//! A node's control-plane state on disk: `control-node.json` in the node's state dir (mode 0600,
//! written atomically: temp file + fsync + rename + fsync of the directory).
//!
//! It holds the machine key (the node's identity towards the server, independent of WireGuard),
//! the WireGuard node key, the pinned server key with its login URL, and the last registration.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use super::proto::{key_b64, Registration};
use crate::wg::Key;

/// File name of the state inside the state dir.
pub const STATE_FILE: &str = "control-node.json";

mod opt_key_b64 {
    use crate::wg::Key;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(k: &Option<Key>, s: S) -> Result<S::Ok, S::Error> {
        match k {
            Some(k) => s.serialize_some(&k.to_base64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Key>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| {
                Key::from_base64(&s).map_err(|e| serde::de::Error::custom(format!("key: {e}")))
            })
            .transpose()
    }
}

/// The persisted state.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// Format version.
    pub version: u32,
    /// Private machine key (Noise static key).
    #[serde(with = "key_b64")]
    pub machine_key: Key,
    /// Private WireGuard key.
    #[serde(with = "key_b64")]
    pub node_key: Key,
    /// The login server this state belongs to (`tg://host:port`, without the key).
    #[serde(default)]
    pub login_server: Option<String>,
    /// The pinned server public key.
    #[serde(default, with = "opt_key_b64")]
    pub server_key: Option<Key>,
    /// The last successful registration.
    #[serde(default)]
    pub registration: Option<Registration>,
}

impl std::fmt::Debug for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeState")
            .field("machine_key", &self.machine_key.public_key().short())
            .field("node_key", &self.node_key.public_key().short())
            .field("login_server", &self.login_server)
            .field("registration", &self.registration)
            .finish()
    }
}

impl NodeState {
    /// Fresh keys, no server.
    pub fn generate() -> NodeState {
        NodeState {
            version: 1,
            machine_key: Key::generate_private(),
            node_key: Key::generate_private(),
            login_server: None,
            server_key: None,
            registration: None,
        }
    }

    /// The path of the state file in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Loads the state from `dir`, `None` if there is none yet.
    pub fn load(dir: &Path) -> Result<Option<NodeState>> {
        let path = Self::path(dir);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let state: NodeState = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid node state", path.display()))?;
        if state.version != 1 {
            return Err(anyhow!(
                "{}: unsupported state version {}",
                path.display(),
                state.version
            ));
        }
        Ok(Some(state))
    }

    /// Loads the state from `dir` or creates (and saves) a fresh one.
    pub fn load_or_create(dir: &Path) -> Result<NodeState> {
        if let Some(s) = Self::load(dir)? {
            return Ok(s);
        }
        let s = Self::generate();
        s.save(dir)?;
        Ok(s)
    }

    /// Saves the state atomically (mode 0600).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)?;
        write_atomic(&Self::path(dir), &json)
    }
}

/// Writes `data` to `path` atomically with mode 0600 (see [`crate::atomic_file::write`]).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    crate::atomic_file::write(path, data, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trip_atomic_0600() {
        let dir = std::env::temp_dir().join(format!(
            "tg-node-state-{}-{}",
            std::process::id(),
            super::super::store::unix_now_ms()
        ));
        struct Cleanup(PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = fs::remove_dir_all(&self.0);
            }
        }
        let _c = Cleanup(dir.clone());
        assert!(NodeState::load(&dir).unwrap().is_none());
        let mut s = NodeState::load_or_create(&dir).unwrap();
        s.server_key = Some(Key::generate_private().public_key());
        s.login_server = Some("tg://127.0.0.1:1".into());
        s.save(&dir).unwrap();
        let back = NodeState::load(&dir).unwrap().unwrap();
        assert!(back == s);
        let mode = fs::metadata(NodeState::path(&dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temp files left");
        fs::write(NodeState::path(&dir), "{").unwrap();
        assert!(NodeState::load(&dir).is_err());
    }
}
