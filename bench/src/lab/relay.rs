//! `tailgate derp serve` in a lab host, and the relay map that points at it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::control::{TempDir, SETTLE};
use super::process::{wait_for, Process};
use super::{Host, Lab};

/// The region ID lab relays use.
pub const LAB_REGION: u32 = 900;
/// The port lab relays listen on.
pub const LAB_RELAY_PORT: u16 = 8443;

/// A relay server in a lab host. Field order: the process stops before its state goes.
pub struct RelayServer {
    /// The server process.
    pub process: Process,
    /// Its relay-map node entry (as it printed it, with the host's address added).
    pub node: serde_json::Value,
    host: Host,
    bin: PathBuf,
    state: TempDir,
}

impl RelayServer {
    /// Starts a relay (self-signed certificate) in lab host `index`.
    pub fn start(lab: &Lab, bin: &Path, index: u8) -> Result<RelayServer> {
        let host = lab.host(index)?;
        let state = TempDir::new("tg-relay")?;
        let (process, node) = Self::spawn(&host, bin, &state)?;
        Ok(RelayServer {
            process,
            node,
            host,
            bin: bin.to_path_buf(),
            state,
        })
    }

    fn spawn(host: &Host, bin: &Path, state: &TempDir) -> Result<(Process, serde_json::Value)> {
        let listen = format!("{}:{LAB_RELAY_PORT}", host.underlay_v4());
        let mut cmd = host.ns.command(bin.to_str().context("binary path")?);
        cmd.args([
            "derp",
            "serve",
            "--listen",
            &listen,
            "--hostname",
            "relay.lab",
        ])
        .args(["--region-id", &LAB_REGION.to_string(), "--state-dir"])
        .arg(&state.0)
        .env("RUST_LOG", "info");
        let mut process = Process::spawn("tg-relay", cmd)?;
        let mut node: serde_json::Value = wait_for("the relay to start", SETTLE, || {
            process.check_running()?;
            Ok(process
                .log()
                .lines()
                .find_map(|l| l.strip_prefix("relay map node: "))
                .and_then(|j| serde_json::from_str(j).ok()))
        })?;
        node["IPv4"] = host.underlay_v4().to_string().into();
        Ok((process, node))
    }

    /// A relay map (JSON) with this relay as the only node of region [`LAB_REGION`].
    pub fn derp_map(&self) -> String {
        serde_json::json!({
            "Regions": {
                LAB_REGION.to_string(): {
                    "RegionID": LAB_REGION,
                    "RegionCode": "lab",
                    "RegionName": "Lab relay",
                    "Nodes": [self.node],
                }
            }
        })
        .to_string()
    }

    /// Writes [`RelayServer::derp_map`] into the relay's state directory; returns the path.
    pub fn write_derp_map(&self) -> Result<PathBuf> {
        let path = self.state.0.join("derp-map.json");
        std::fs::write(&path, self.derp_map())?;
        Ok(path)
    }

    /// Kills the relay (SIGKILL).
    pub fn kill(&mut self) -> Result<()> {
        self.process.signal(libc::SIGKILL);
        self.process.stop().map(drop)
    }

    /// Starts it again with the same key and certificate.
    pub fn restart(&mut self) -> Result<()> {
        let _ = self.process.stop();
        let (process, _) = Self::spawn(&self.host, &self.bin, &self.state)?;
        self.process = process;
        Ok(())
    }
}
