//! Login-server URLs: `tg://HOST:PORT#KEY`.
//!
//! `KEY` is the server's Noise public key (64 hex digits, or base64 in either alphabet, padded
//! or not). With the key the node pins the server from the first connection; without it
//! (`tg://HOST:PORT` or plain `HOST:PORT`) the node fetches the key once and pins it in its state
//! (trust on first use). `tailgate control info` prints the full URL.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;

use crate::wg::Key;

/// The default port of `tailgate control serve`.
pub const DEFAULT_PORT: u16 = 7443;

/// A parsed login-server URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginServer {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The pinned server public key, if the URL carries one.
    pub server_key: Option<Key>,
}

/// Why a login URL was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("login server {url:?}: {reason} (expected tg://HOST:PORT#SERVER_KEY)")]
pub struct LoginUrlError {
    url: String,
    reason: String,
}

impl LoginServer {
    /// `host:port`, bracketing IPv6 literals, for connecting.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The same server with `key` pinned.
    pub fn with_key(&self, key: Key) -> LoginServer {
        LoginServer {
            server_key: Some(key),
            ..self.clone()
        }
    }
}

impl fmt::Display for LoginServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tg://{}", self.address())?;
        if let Some(k) = &self.server_key {
            write!(f, "#{}", k.to_hex())?;
        }
        Ok(())
    }
}

fn parse_key(s: &str) -> Option<Key> {
    if s.len() == 64 {
        if let Ok(k) = Key::from_hex(s) {
            return Some(k);
        }
    }
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(s).ok())
        .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok())
        .map(Key::from_bytes)
}

impl FromStr for LoginServer {
    type Err = LoginUrlError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| LoginUrlError {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let rest = url.trim();
        let rest = match rest.split_once("://") {
            Some(("tg", r)) => r,
            Some((scheme, _)) => {
                return Err(err(&format!("unsupported scheme {scheme:?}, use tg://")))
            }
            None => rest,
        };
        let (hostport, key) = match rest.split_once('#') {
            Some((hp, k)) => (hp, Some(k)),
            None => (rest, None),
        };
        let hostport = hostport.trim_end_matches('/');
        let server_key = match key {
            Some(k) if !k.is_empty() => {
                Some(parse_key(k).ok_or_else(|| err("the key after # is not a 32-byte key"))?)
            }
            _ => None,
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| err("unclosed [ in IPv6 address"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| err("bad port"))?,
                None if after.is_empty() => DEFAULT_PORT,
                None => return Err(err("junk after ]")),
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| err("bad port"))?),
                None => (hostport.to_string(), DEFAULT_PORT),
            }
        };
        if host.is_empty() {
            return Err(err("missing host"));
        }
        if port == 0 {
            return Err(err("port 0"));
        }
        Ok(LoginServer {
            host,
            port,
            server_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        let k = Key::generate_private().public_key();
        let url = format!("tg://127.0.0.1:9000#{}", k.to_hex());
        let l: LoginServer = url.parse().unwrap();
        assert_eq!(l.host, "127.0.0.1");
        assert_eq!(l.port, 9000);
        assert_eq!(l.server_key, Some(k));
        assert_eq!(l.to_string(), url);

        let l: LoginServer = format!("[::1]:7#{}", k.to_base64()).parse().unwrap();
        assert_eq!((l.host.as_str(), l.port, l.server_key), ("::1", 7, Some(k)));
        assert_eq!(l.address(), "[::1]:7");

        let l: LoginServer = "tg://ctl.example".parse().unwrap();
        assert_eq!(l.port, DEFAULT_PORT);
        assert_eq!(l.server_key, None);

        assert!("https://x:1".parse::<LoginServer>().is_err());
        assert!("tg://x:1#abc".parse::<LoginServer>().is_err());
        assert!("tg://:1".parse::<LoginServer>().is_err());
        assert!("tg://x:notaport".parse::<LoginServer>().is_err());
    }
}
