//! Parsing `set=1` requests and formatting `get=1` answers of the WireGuard UAPI.
//!
//! The format is line-oriented `key=value`, keys in hex, terminated by an empty line; see
//! <https://www.wireguard.com/xplatform/>. Pure functions, no I/O.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use crate::wg::Key;

/// A protocol error; its `errno` is what the `errno=` line carries (negative, as wireguard-go).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UapiError {
    /// Negative errno sent back to the client.
    pub errno: i32,
    /// Human-readable reason, logged by the daemon.
    pub reason: String,
}

impl UapiError {
    /// An `EINVAL` error with a reason.
    pub fn invalid(reason: impl Into<String>) -> Self {
        UapiError {
            errno: -libc::EINVAL,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for UapiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (errno {})", self.reason, self.errno)
    }
}

/// A parsed `set=1` request.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SetRequest {
    /// New private key; `Some(None)` (an all-zero key) removes it.
    pub private_key: Option<Option<Key>>,
    /// New listen port.
    pub listen_port: Option<u16>,
    /// New firewall mark for outgoing packets (0 = none).
    pub fwmark: Option<u32>,
    /// Remove all peers not mentioned before applying the updates.
    pub replace_peers: bool,
    /// Per-peer changes, in request order.
    pub peers: Vec<PeerUpdate>,
}

/// Changes to one peer.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerUpdate {
    /// The peer's public key.
    pub public_key: Key,
    /// Remove the peer.
    pub remove: bool,
    /// Only change an existing peer; never create one.
    pub update_only: bool,
    /// New pre-shared key; `Some(None)` removes it.
    pub preshared_key: Option<Option<Key>>,
    /// New endpoint.
    pub endpoint: Option<SocketAddr>,
    /// New persistent keepalive interval (0 = off).
    pub persistent_keepalive: Option<u16>,
    /// Drop the existing allowed IPs before adding `allowed_ips`.
    pub replace_allowed_ips: bool,
    /// Allowed IPs to add.
    pub allowed_ips: Vec<IpNet>,
}

impl PeerUpdate {
    fn new(public_key: Key) -> Self {
        PeerUpdate {
            public_key,
            remove: false,
            update_only: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
        }
    }
}

fn hex_key(key: &str, value: &str) -> Result<Option<Key>, UapiError> {
    let k = Key::from_hex(value).map_err(|e| UapiError::invalid(format!("{key}: {e}")))?;
    Ok(if k.is_zero() { None } else { Some(k) })
}

fn boolean(key: &str, value: &str) -> Result<bool, UapiError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(UapiError::invalid(format!(
            "{key}: expected true or false, got {value:?}"
        ))),
    }
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, UapiError> {
    value
        .parse()
        .map_err(|_| UapiError::invalid(format!("{key}: {value:?} is not a valid number")))
}

/// Parses the body of a `set=1` request (the lines after `set=1`, without the empty line).
pub fn parse_set(body: &str) -> Result<SetRequest, UapiError> {
    let mut req = SetRequest::default();
    let mut peer: Option<PeerUpdate> = None;
    for line in body.lines() {
        if line.is_empty() {
            break;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| UapiError::invalid(format!("line without '=': {line:?}")))?;
        if key == "public_key" {
            req.peers.extend(peer.take());
            let k =
                hex_key(key, value)?.ok_or_else(|| UapiError::invalid("public_key: zero key"))?;
            peer = Some(PeerUpdate::new(k));
            continue;
        }
        match peer.as_mut() {
            None => match key {
                "private_key" => req.private_key = Some(hex_key(key, value)?),
                "listen_port" => req.listen_port = Some(number(key, value)?),
                "fwmark" => req.fwmark = Some(number(key, value)?),
                "replace_peers" => req.replace_peers = boolean(key, value)?,
                _ => return Err(UapiError::invalid(format!("unknown device key {key:?}"))),
            },
            Some(p) => match key {
                "remove" => p.remove = boolean(key, value)?,
                "update_only" => p.update_only = boolean(key, value)?,
                "preshared_key" => p.preshared_key = Some(hex_key(key, value)?),
                "endpoint" => {
                    p.endpoint = Some(value.parse().map_err(|_| {
                        UapiError::invalid(format!("endpoint: {value:?} is not ip:port"))
                    })?)
                }
                "persistent_keepalive_interval" => {
                    p.persistent_keepalive = Some(number(key, value)?)
                }
                "replace_allowed_ips" => p.replace_allowed_ips = boolean(key, value)?,
                "allowed_ip" => p.allowed_ips.push(
                    value
                        .parse::<IpNet>()
                        .map_err(|_| {
                            UapiError::invalid(format!("allowed_ip: {value:?} is not a CIDR"))
                        })?
                        .trunc(),
                ),
                "protocol_version" => {
                    if value != "1" {
                        return Err(UapiError::invalid(format!(
                            "protocol_version {value} unsupported"
                        )));
                    }
                }
                _ => return Err(UapiError::invalid(format!("unknown peer key {key:?}"))),
            },
        }
    }
    req.peers.extend(peer);
    Ok(req)
}

/// What `get=1` reports about the device.
#[derive(Debug, Clone)]
pub struct DeviceSnapshot {
    /// Our private key, if set.
    pub private_key: Option<Key>,
    /// The UDP port in use.
    pub listen_port: u16,
    /// Firewall mark (0 = none).
    pub fwmark: u32,
    /// Every peer.
    pub peers: Vec<PeerSnapshot>,
}

/// What `get=1` reports about one peer.
#[derive(Debug, Clone)]
pub struct PeerSnapshot {
    /// The peer's public key.
    pub public_key: Key,
    /// The pre-shared key, if any.
    pub preshared_key: Option<Key>,
    /// Current endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Time of the latest completed handshake.
    pub last_handshake: Option<SystemTime>,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Datagrams sent to the peer.
    pub tx_packets: u64,
    /// Authenticated datagrams received from the peer.
    pub rx_packets: u64,
    /// Handshakes completed with the peer (either role).
    pub handshakes: u64,
    /// Persistent keepalive interval (0 = off).
    pub persistent_keepalive: u16,
    /// Allowed IPs.
    pub allowed_ips: Vec<IpNet>,
}

/// Formats the answer to `get=1`, including the final `errno=0` and empty line.
pub fn format_get(dev: &DeviceSnapshot) -> String {
    let mut out = String::new();
    if let Some(k) = &dev.private_key {
        let _ = writeln!(out, "private_key={}", k.to_hex());
    }
    let _ = writeln!(out, "listen_port={}", dev.listen_port);
    if dev.fwmark != 0 {
        let _ = writeln!(out, "fwmark={}", dev.fwmark);
    }
    for p in &dev.peers {
        let _ = writeln!(out, "public_key={}", p.public_key.to_hex());
        if let Some(psk) = &p.preshared_key {
            let _ = writeln!(out, "preshared_key={}", psk.to_hex());
        }
        let _ = writeln!(out, "protocol_version=1");
        if let Some(e) = p.endpoint {
            let _ = writeln!(out, "endpoint={e}");
        }
        let since = p
            .last_handshake
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .unwrap_or(Duration::ZERO);
        let _ = writeln!(out, "last_handshake_time_sec={}", since.as_secs());
        let _ = writeln!(out, "last_handshake_time_nsec={}", since.subsec_nanos());
        let _ = writeln!(out, "tx_bytes={}", p.tx_bytes);
        let _ = writeln!(out, "rx_bytes={}", p.rx_bytes);
        let _ = writeln!(
            out,
            "persistent_keepalive_interval={}",
            p.persistent_keepalive
        );
        for ip in &p.allowed_ips {
            let _ = writeln!(out, "allowed_ip={ip}");
        }
    }
    out.push_str("errno=0\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PUB_HEX: &str = "e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a";

    #[test]
    fn parses_wg_set_requests() {
        let body = format!(
            "private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a\n\
             listen_port=12912\nreplace_peers=true\npublic_key={PUB_HEX}\n\
             preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n\
             endpoint=[abcd:23::33%2]:51820\npersistent_keepalive_interval=25\n\
             replace_allowed_ips=true\nallowed_ip=192.168.4.4/32\nallowed_ip=10.0.0.9/8\n\
             public_key=58402e695ba1772b1cc9309755f043251ea77fdcf10fbe63989ceb7e19321376\n\
             remove=true\n"
        );
        let r = parse_set(&body).unwrap();
        assert_eq!(r.listen_port, Some(12912));
        assert!(r.replace_peers);
        assert_eq!(r.peers.len(), 2);
        let p = &r.peers[0];
        assert_eq!(p.public_key.to_hex(), PUB_HEX);
        assert_eq!(p.preshared_key, Some(None));
        assert_eq!(p.persistent_keepalive, Some(25));
        assert!(p.replace_allowed_ips);
        assert_eq!(p.allowed_ips[1], "10.0.0.0/8".parse::<IpNet>().unwrap());
        assert!(r.peers[1].remove);
    }

    #[test]
    fn rejects_bad_lines() {
        for body in [
            "listen_port=70000\n",
            "bogus=1\n",
            "public_key=abc\n",
            &format!("public_key={PUB_HEX}\nallowed_ip=10.0.0.1/40\n"),
            &format!("public_key={PUB_HEX}\nremove=yes\n"),
            "no equals sign\n",
        ] {
            let e = parse_set(body).unwrap_err();
            assert_eq!(e.errno, -libc::EINVAL, "{body}");
        }
    }

    #[test]
    fn formats_get() {
        let dev = DeviceSnapshot {
            private_key: None,
            listen_port: 51820,
            fwmark: 0,
            peers: vec![PeerSnapshot {
                public_key: Key::from_hex(PUB_HEX).unwrap(),
                preshared_key: None,
                endpoint: Some("10.0.0.2:51820".parse().unwrap()),
                last_handshake: Some(SystemTime::UNIX_EPOCH + Duration::new(5, 7)),
                tx_bytes: 1,
                rx_bytes: 2,
                tx_packets: 0,
                rx_packets: 0,
                handshakes: 0,
                persistent_keepalive: 25,
                allowed_ips: vec!["100.64.0.2/32".parse().unwrap()],
            }],
        };
        let s = format_get(&dev);
        assert_eq!(
            s,
            format!(
                "listen_port=51820\npublic_key={PUB_HEX}\nprotocol_version=1\n\
                 endpoint=10.0.0.2:51820\nlast_handshake_time_sec=5\nlast_handshake_time_nsec=7\n\
                 tx_bytes=1\nrx_bytes=2\npersistent_keepalive_interval=25\n\
                 allowed_ip=100.64.0.2/32\nerrno=0\n\n"
            )
        );
    }

    proptest! {
        /// Arbitrary client input never panics the parser.
        #[test]
        fn parse_set_never_panics(s in "\\PC*") {
            let _ = parse_set(&s);
        }

        #[test]
        fn parse_set_never_panics_on_keyish_lines(lines in proptest::collection::vec(
            ("(public_key|allowed_ip|endpoint|listen_port|remove|fwmark|preshared_key)", "[0-9a-f:./\\[\\]%]{0,70}"), 0..8)) {
            let body: String = lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            let _ = parse_set(&body);
        }
    }
}
