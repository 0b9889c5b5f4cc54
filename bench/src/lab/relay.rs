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
/// Where a lab relay serves `/metrics`, inside its namespace.
const METRICS_ADDR: ([u8; 4], u16) = ([127, 0, 0, 1], 9464);
/// The relay's STUN port (the default).
pub const LAB_STUN_PORT: u16 = 3478;

/// A relay server in a lab host. Field order: the process stops before its state goes.
pub struct RelayServer {
    /// The server process.
    pub process: Process,
    /// Its relay-map node entry (as it printed it, with the host's address added).
    pub node: serde_json::Value,
    /// Its region ID.
    pub region: u32,
    /// Listening on IPv6 too, with the host's IPv6 address in its map entry.
    dual_stack: bool,
    host: Host,
    bin: PathBuf,
    state: TempDir,
}

impl RelayServer {
    /// Starts a relay (self-signed certificate) in lab host `index`.
    pub fn start(lab: &Lab, bin: &Path, index: u8) -> Result<RelayServer> {
        Self::start_region(lab, bin, index, LAB_REGION)
    }

    /// Starts a relay of region `region` (its only node, named `relay-<region>`) in lab host
    /// `index`; see [`region_map`] for a map of several.
    pub fn start_region(lab: &Lab, bin: &Path, index: u8, region: u32) -> Result<RelayServer> {
        Self::start_with(lab, bin, index, region, false)
    }

    /// Starts a relay of [`LAB_REGION`] in lab host `index` that listens (relay and STUN) on
    /// IPv6 as well as IPv4, its map entry carrying both underlay addresses.
    pub fn start_dual_stack(lab: &Lab, bin: &Path, index: u8) -> Result<RelayServer> {
        Self::start_with(lab, bin, index, LAB_REGION, true)
    }

    fn start_with(
        lab: &Lab,
        bin: &Path,
        index: u8,
        region: u32,
        dual_stack: bool,
    ) -> Result<RelayServer> {
        let host = lab.host(index)?;
        let state = TempDir::new("tg-relay")?;
        let (process, node) = Self::spawn(&host, bin, &state, region, dual_stack)?;
        Ok(RelayServer {
            process,
            node,
            region,
            dual_stack,
            host,
            bin: bin.to_path_buf(),
            state,
        })
    }

    fn spawn(
        host: &Host,
        bin: &Path,
        state: &TempDir,
        region: u32,
        dual_stack: bool,
    ) -> Result<(Process, serde_json::Value)> {
        let listen = if dual_stack {
            format!("[::]:{LAB_RELAY_PORT}")
        } else {
            format!("{}:{LAB_RELAY_PORT}", host.underlay_v4())
        };
        let mut cmd = host.ns.command(bin.to_str().context("binary path")?);
        cmd.args([
            "derp",
            "serve",
            "--listen",
            &listen,
            "--hostname",
            "relay.lab",
        ])
        .args(["--region-id", &region.to_string(), "--state-dir"])
        .arg(&state.0)
        .arg("--metrics-listen")
        .arg(std::net::SocketAddr::from(METRICS_ADDR).to_string())
        .env("RUST_LOG", "info");
        if region != LAB_REGION {
            cmd.args(["--node-name", &format!("relay-{region}")]);
        }
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
        if dual_stack {
            node["IPv6"] = host.underlay_v6().to_string().into();
        }
        Ok((process, node))
    }

    /// A relay map (JSON) with this relay as the only node of its region ([`LAB_REGION`]
    /// unless started with [`RelayServer::start_region`]).
    pub fn derp_map(&self) -> String {
        region_map(&[self])
    }

    /// Writes [`RelayServer::derp_map`] into the relay's state directory; returns the path.
    pub fn write_derp_map(&self) -> Result<PathBuf> {
        let path = self.state.0.join("derp-map.json");
        std::fs::write(&path, self.derp_map())?;
        Ok(path)
    }

    /// The relay's `/metrics` text.
    pub fn metrics(&self) -> Result<String> {
        let (code, body) =
            super::proxy_client::http_get(&self.host.ns, METRICS_ADDR.into(), "/metrics")?;
        anyhow::ensure!(code == 200, "/metrics answered {code}");
        Ok(body)
    }

    /// The relay's lab host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Kills the relay (SIGKILL).
    pub fn kill(&mut self) -> Result<()> {
        self.process.signal(libc::SIGKILL);
        self.process.stop().map(drop)
    }

    /// Starts it again with the same key and certificate.
    pub fn restart(&mut self) -> Result<()> {
        let _ = self.process.stop();
        let (process, _) = Self::spawn(
            &self.host,
            &self.bin,
            &self.state,
            self.region,
            self.dual_stack,
        )?;
        self.process = process;
        Ok(())
    }
}

/// A relay map (JSON) with one region per relay, each relay its region's only node: region
/// [`LAB_REGION`] is code `lab`, name "Lab relay"; region N is code `rN`, name "Lab relay N".
pub fn region_map(relays: &[&RelayServer]) -> String {
    let regions: serde_json::Map<String, serde_json::Value> = relays
        .iter()
        .map(|r| {
            let (code, name) = if r.region == LAB_REGION {
                ("lab".to_string(), "Lab relay".to_string())
            } else {
                (format!("r{}", r.region), format!("Lab relay {}", r.region))
            };
            let region = serde_json::json!({
                "RegionID": r.region,
                "RegionCode": code,
                "RegionName": name,
                "Nodes": [r.node],
            });
            (r.region.to_string(), region)
        })
        .collect();
    serde_json::json!({ "Regions": regions }).to_string()
}
