//! Serves the WireGuard UAPI on `/var/run/wireguard/<name>.sock`.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;

use crate::device::Device;
use crate::netcfg::InstalledRoutes;

use super::protocol::{format_get, parse_set, UapiError};

/// Directory where `wg` looks for userspace interfaces.
pub const UAPI_DIR: &str = "/var/run/wireguard";
/// Largest request accepted (a `setconf` with many peers fits easily).
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Environment variable naming another directory for the sockets, for a daemon running as a
/// user that cannot write [`UAPI_DIR`] (a NAS package); `wg` itself only looks in [`UAPI_DIR`].
pub const UAPI_DIR_ENV: &str = "TAILGATE_WG_DIR";

/// The socket path for interface `name`.
pub fn socket_path(name: &str) -> PathBuf {
    let dir = std::env::var_os(UAPI_DIR_ENV)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(UAPI_DIR));
    dir.join(format!("{name}.sock"))
}

/// Accepts `wg` clients until the task is dropped. After each successful `set`, the TUN
/// routes are brought in line with the peers' allowed IPs.
pub async fn serve(listener: UnixListener, dev: Arc<Device>, routes: Arc<Mutex<InstalledRoutes>>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (dev, routes) = (dev.clone(), routes.clone());
                tokio::spawn(async move {
                    if let Err(e) = client(stream, &dev, &routes).await {
                        log::debug!("wg client: {e}");
                    }
                });
            }
            Err(e) => {
                log::warn!("wg socket accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn client(
    stream: UnixStream,
    dev: &Device,
    routes: &Mutex<InstalledRoutes>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut op = String::new();
        if reader.read_line(&mut op).await? == 0 {
            return Ok(());
        }
        let answer = match op.trim_end_matches('\n') {
            "get=1" => {
                read_body(&mut reader).await?;
                format_get(&dev.snapshot())
            }
            "set=1" => {
                let body = read_body(&mut reader).await?;
                match set(dev, routes, &body).await {
                    Ok(()) => "errno=0\n\n".to_string(),
                    Err(e) => {
                        log::warn!("wg set refused: {e}");
                        format!("errno={}\n\n", e.errno)
                    }
                }
            }
            other => {
                log::debug!("wg client sent unknown operation {other:?}");
                return Ok(());
            }
        };
        write.write_all(answer.as_bytes()).await?;
    }
}

async fn set(dev: &Device, routes: &Mutex<InstalledRoutes>, body: &str) -> Result<(), UapiError> {
    let req = parse_set(body)?;
    dev.apply(&req)?;
    routes
        .lock()
        .await
        .sync(&dev.allowed_networks())
        .await
        .map_err(|e| UapiError::invalid(format!("updating routes: {e:#}")))
}

/// Reads lines up to the empty line that ends a request.
async fn read_body<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<String> {
    let mut body = String::new();
    loop {
        let before = body.len();
        if reader.read_line(&mut body).await? == 0 || body.len() > MAX_REQUEST_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request not terminated",
            ));
        }
        if &body[before..] == "\n" {
            body.truncate(before);
            return Ok(body);
        }
    }
}
