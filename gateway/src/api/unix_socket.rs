//! Binding unix sockets safely: refuse if a live daemon owns the path, replace a stale file,
//! restrict permissions, and remove the file again on drop.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use tokio::net::UnixListener;

/// A bound unix socket path, removed when dropped.
pub struct BoundSocket {
    path: PathBuf,
}

impl BoundSocket {
    /// Binds `path` (mode 0600, parent created with 0755). Fails if another process is
    /// listening there.
    pub fn bind(path: &Path) -> Result<(BoundSocket, UnixListener)> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(anyhow!(
                    "{} is in use by another running daemon",
                    path.display()
                ));
            }
            fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        Ok((
            BoundSocket {
                path: path.to_path_buf(),
            },
            listener,
        ))
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
