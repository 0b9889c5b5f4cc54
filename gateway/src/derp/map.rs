//! The relay map: regions of relay servers, in Tailscale's `derpMap` JSON shape (`Regions`
//! keyed by region ID, each with `RegionID`, `RegionCode`, `RegionName`, `Nodes`), plus three
//! node fields of our own: `CertSHA256` (pin a self-signed certificate), `PublicKey` (the
//! relay's key, checked at connect) and `PlainHTTP`.
//!
//! The coordination server holds a base map (`tailgate control serve --derp-map FILE`); the
//! policy file's `derpMap` patches it: a region set to `null` is removed, others are added or
//! replaced, and `OmitDefaultRegions` drops the base map's regions.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::client::ConnectOptions;
use super::tls::Verification;
use crate::wg::Key;

/// Default relay port (HTTPS).
pub const DEFAULT_DERP_PORT: u16 = 443;
/// Default STUN port.
pub const DEFAULT_STUN_PORT: u16 = 3478;

/// One relay server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayNode {
    /// Unique name of the node (e.g. "900a").
    #[serde(rename = "Name")]
    pub name: String,
    /// The region the node belongs to.
    #[serde(rename = "RegionID")]
    pub region_id: u32,
    /// DNS name: where to connect (unless IPv4/IPv6 are given) and the TLS name.
    #[serde(rename = "HostName", default)]
    pub host_name: String,
    /// TLS name to expect, if not the host name.
    #[serde(rename = "CertName", default, skip_serializing_if = "Option::is_none")]
    pub cert_name: Option<String>,
    /// Fixed IPv4 address (skips DNS).
    #[serde(rename = "IPv4", default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    /// Fixed IPv6 address (skips DNS).
    #[serde(rename = "IPv6", default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// STUN port: 0 means 3478, -1 means no STUN on this node.
    #[serde(rename = "STUNPort", default)]
    pub stun_port: i32,
    /// The node only does STUN, no relaying.
    #[serde(rename = "STUNOnly", default)]
    pub stun_only: bool,
    /// Relay port: 0 means 443.
    #[serde(rename = "DERPPort", default)]
    pub derp_port: u16,
    /// Skip certificate verification (labs only).
    #[serde(rename = "InsecureForTests", default)]
    pub insecure_for_tests: bool,
    /// SHA-256 of the node's certificate, lowercase hex: accept exactly that certificate.
    #[serde(
        rename = "CertSHA256",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cert_sha256: Option<String>,
    /// The relay server's public key (base64); the connection fails if it has another.
    #[serde(rename = "PublicKey", default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Plain HTTP instead of TLS (a relay behind a TLS-terminating proxy on a private path).
    #[serde(rename = "PlainHTTP", default)]
    pub plain_http: bool,
}

/// A region: relay servers that mesh with each other.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRegion {
    /// The region's ID (the key it is listed under).
    #[serde(rename = "RegionID")]
    pub region_id: u32,
    /// Short code (e.g. "home").
    #[serde(rename = "RegionCode", default)]
    pub region_code: String,
    /// Human-readable name.
    #[serde(rename = "RegionName", default)]
    pub region_name: String,
    /// Nodes should not pick this region as home unless nothing else works.
    #[serde(rename = "Avoid", default)]
    pub avoid: bool,
    /// The region's servers, in order of preference.
    #[serde(rename = "Nodes", default)]
    pub nodes: Vec<RelayNode>,
}

/// The relay map nodes get in their netmap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayMap {
    /// Regions by ID (JSON object keys are the IDs as strings).
    #[serde(rename = "Regions", default, with = "string_keys")]
    pub regions: BTreeMap<u32, RelayRegion>,
}

/// Region maps keyed by ID in Rust and by the ID's decimal string in JSON, also through
/// `serde_json::Value` (which does not turn string keys into numbers).
mod string_keys {
    use std::collections::BTreeMap;

    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    use super::RelayRegion;

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<u32, RelayRegion>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter().map(|(k, v)| (k.to_string(), v)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<u32, RelayRegion>, D::Error> {
        BTreeMap::<String, RelayRegion>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| {
                k.parse::<u32>()
                    .map(|id| (id, v))
                    .map_err(|_| D::Error::custom(format!("region key {k:?} is not a number")))
            })
            .collect()
    }
}

/// A policy file's `derpMap`: regions to add or replace, `null` to remove.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayMapPatch {
    /// Regions by ID (as JSON object keys); `null` removes the region.
    #[serde(rename = "Regions", default)]
    pub regions: BTreeMap<String, Option<RelayRegion>>,
    /// Start from an empty map instead of the server's base map.
    #[serde(rename = "OmitDefaultRegions", default)]
    pub omit_default_regions: bool,
}

/// Why a relay map is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("relay map: {0}")]
pub struct MapError(pub String);

fn err<T>(msg: String) -> Result<T, MapError> {
    Err(MapError(msg))
}

impl RelayNode {
    /// Checks the node's fields (in region `region`).
    fn validate(&self, region: u32) -> Result<(), MapError> {
        let n = &self.name;
        if n.is_empty() {
            return err(format!("region {region}: a node has no Name"));
        }
        if self.region_id != region {
            return err(format!(
                "node {n}: RegionID {} but listed in region {region}",
                self.region_id
            ));
        }
        if self.host_name.is_empty() && self.ipv4.is_none() && self.ipv6.is_none() {
            return err(format!("node {n}: needs HostName, IPv4 or IPv6"));
        }
        if !(-1..=65535).contains(&self.stun_port) {
            return err(format!(
                "node {n}: STUNPort {} is not -1 or a port",
                self.stun_port
            ));
        }
        if let Some(fp) = &self.cert_sha256 {
            if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
                return err(format!("node {n}: CertSHA256 must be 64 hex digits"));
            }
        }
        if let Some(k) = &self.public_key {
            Key::from_base64(k).map_err(|e| MapError(format!("node {n}: PublicKey: {e}")))?;
        }
        Ok(())
    }

    /// The relay's port.
    pub fn derp_port(&self) -> u16 {
        if self.derp_port == 0 {
            DEFAULT_DERP_PORT
        } else {
            self.derp_port
        }
    }

    /// The STUN port, or `None` when the node has no STUN.
    pub fn stun_port(&self) -> Option<u16> {
        match self.stun_port {
            -1 => None,
            0 => Some(DEFAULT_STUN_PORT),
            p => u16::try_from(p).ok(),
        }
    }

    /// The fixed addresses of the node (IPv4 first), without DNS.
    pub fn fixed_addrs(&self) -> Vec<IpAddr> {
        let mut v = Vec::new();
        if let Some(a) = self.ipv4 {
            v.push(IpAddr::V4(a));
        }
        if let Some(a) = self.ipv6 {
            v.push(IpAddr::V6(a));
        }
        v
    }

    /// How to connect to the node's relay at `addr`.
    pub fn connect_options(&self, addr: IpAddr) -> ConnectOptions {
        let verification = if self.insecure_for_tests {
            Verification::Insecure
        } else if let Some(fp) = &self.cert_sha256 {
            Verification::Pinned(fp.to_ascii_lowercase())
        } else {
            Verification::WebPki
        };
        let host = self.cert_name.as_deref().unwrap_or(&self.host_name);
        let host = if host.is_empty() {
            addr.to_string()
        } else {
            host.to_string()
        };
        let mut o =
            ConnectOptions::new(&host, SocketAddr::new(addr, self.derp_port()), verification);
        if self.plain_http {
            o.tls = None;
        }
        o.expect_server_key = self
            .public_key
            .as_deref()
            .and_then(|k| Key::from_base64(k).ok())
            .map(|k| *k.as_bytes());
        o
    }
}

impl RelayMap {
    /// Parses and validates a relay map (JSON, Tailscale's shape).
    pub fn from_json(text: &str) -> Result<RelayMap, MapError> {
        let patch: RelayMapPatch =
            serde_json::from_str(text).map_err(|e| MapError(e.to_string()))?;
        RelayMap::default().patched(&RelayMapPatch {
            omit_default_regions: true,
            ..patch
        })
    }

    /// Checks every region and node; node names are unique across the map.
    pub fn validate(&self) -> Result<(), MapError> {
        let mut names = HashSet::new();
        for (id, region) in &self.regions {
            if *id == 0 {
                return err("region ID 0 is reserved".into());
            }
            if region.region_id != *id {
                return err(format!(
                    "region listed as {id} has RegionID {}",
                    region.region_id
                ));
            }
            if region.nodes.is_empty() {
                return err(format!("region {id} has no Nodes"));
            }
            for node in &region.nodes {
                node.validate(*id)?;
                if !names.insert(node.name.clone()) {
                    return err(format!("node name {} is used twice", node.name));
                }
            }
        }
        Ok(())
    }

    /// This map with `patch` applied (see the module documentation), validated.
    pub fn patched(&self, patch: &RelayMapPatch) -> Result<RelayMap, MapError> {
        let mut out = if patch.omit_default_regions {
            RelayMap::default()
        } else {
            self.clone()
        };
        for (key, region) in &patch.regions {
            let id: u32 = key
                .parse()
                .map_err(|_| MapError(format!("region key {key:?} is not a number")))?;
            match region {
                None => {
                    out.regions.remove(&id);
                }
                Some(r) => {
                    out.regions.insert(id, r.clone());
                }
            }
        }
        out.validate()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_EXAMPLE: &str = r#"{
        "Regions": {
          "900": {
            "RegionID": 900,
            "RegionCode": "myderp",
            "RegionName": "My DERP",
            "Nodes": [{ "Name": "myderp1", "RegionID": 900, "HostName": "derp.example.com" }]
          }
        }
      }"#;

    #[test]
    fn reads_the_policy_file_shape() {
        let m = RelayMap::from_json(SEED_EXAMPLE).unwrap();
        let r = &m.regions[&900];
        assert_eq!((r.region_code.as_str(), r.nodes.len()), ("myderp", 1));
        let n = &r.nodes[0];
        assert_eq!((n.derp_port(), n.stun_port()), (443, Some(3478)));
        let o = n.connect_options("192.0.2.1".parse().unwrap());
        assert_eq!(o.host, "derp.example.com");
        assert_eq!(o.addr, "192.0.2.1:443".parse().unwrap());
        assert_eq!(o.tls, Some(Verification::WebPki));
        // Round trip keeps Tailscale's field names, also through a JSON value.
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"RegionID\":900") && json.contains("\"HostName\""));
        let value = serde_json::to_value(&m).unwrap();
        assert_eq!(serde_json::from_value::<RelayMap>(value).unwrap(), m);
    }

    #[test]
    fn patches_remove_null_regions_and_add_others() {
        let base = RelayMap::from_json(SEED_EXAMPLE).unwrap();
        let patch: RelayMapPatch = serde_json::from_str(
            r#"{"Regions": {"900": null, "901": {"RegionID": 901, "Nodes": [
                {"Name": "b", "RegionID": 901, "HostName": "b.test", "STUNPort": -1,
                 "CertSHA256": "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"}]}}}"#,
        )
        .unwrap();
        let m = base.patched(&patch).unwrap();
        assert_eq!(m.regions.keys().copied().collect::<Vec<_>>(), vec![901]);
        let n = &m.regions[&901].nodes[0];
        assert_eq!(n.stun_port(), None);
        assert!(matches!(
            n.connect_options("::1".parse().unwrap()).tls,
            Some(Verification::Pinned(_))
        ));
        let omit = RelayMapPatch {
            omit_default_regions: true,
            ..RelayMapPatch::default()
        };
        assert!(base.patched(&omit).unwrap().regions.is_empty());
    }

    #[test]
    fn the_documented_example_is_valid() {
        let m = RelayMap::from_json(include_str!("../../../config/derp-map.json")).unwrap();
        let nodes = &m.regions[&900].nodes;
        assert_eq!(nodes.len(), 2);
        assert!(nodes[1]
            .connect_options("192.0.2.20".parse().unwrap())
            .expect_server_key
            .is_some());
    }

    #[test]
    fn invalid_maps_are_refused_with_the_reason() {
        for (json, want) in [
            (r#"{"Regions": {"x": null}}"#, "not a number"),
            (
                r#"{"Regions": {"5": {"RegionID": 6, "Nodes": [{"Name": "a", "RegionID": 6, "HostName": "h"}]}}}"#,
                "has RegionID 6",
            ),
            (
                r#"{"Regions": {"5": {"RegionID": 5, "Nodes": []}}}"#,
                "no Nodes",
            ),
            (
                r#"{"Regions": {"5": {"RegionID": 5, "Nodes": [{"Name": "a", "RegionID": 5}]}}}"#,
                "needs HostName",
            ),
            (
                r#"{"Regions": {"5": {"RegionID": 5, "Nodes": [{"Name": "a", "RegionID": 5, "HostName": "h", "STUNPort": 70000}]}}}"#,
                "STUNPort",
            ),
            (
                r#"{"Regions": {"5": {"RegionID": 5, "Nodes": [{"Name": "a", "RegionID": 5, "HostName": "h"}, {"Name": "a", "RegionID": 5, "HostName": "i"}]}}}"#,
                "used twice",
            ),
            (
                r#"{"Regions": {"5": {"RegionID": 5, "Nodes": [{"Name": "a", "RegionID": 5, "HostName": "h", "PublicKey": "nope"}]}}}"#,
                "PublicKey",
            ),
        ] {
            let e = RelayMap::from_json(json).unwrap_err().to_string();
            assert!(e.contains(want), "{json}: {e}");
        }
    }
}
