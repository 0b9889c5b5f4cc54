//! A minimal HTTP/1.1 client for UPnP: one request per connection (`Connection: close`),
//! `http://` URLs only, bounded in time and size. Responses may use Content-Length, chunked
//! encoding or end at the connection close.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The most a response (headers and body) may take.
pub const MAX_RESPONSE: usize = 256 * 1024;

/// An `http://host:port/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port (80 if absent).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    /// Parses an absolute `http://` URL.
    pub fn parse(s: &str) -> Result<Url> {
        let s = s.trim();
        let rest = s
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("http://"))
            .map(|_| &s[7..])
            .ok_or_else(|| anyhow!("not an http:// URL: {s:?}"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| anyhow!("bad IPv6 host in {s:?}"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().with_context(|| format!("bad port in {s:?}"))?,
                None if after.is_empty() => 80,
                None => bail!("bad authority in {s:?}"),
            };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().with_context(|| format!("bad port in {s:?}"))?),
                None => (authority, 80),
            }
        };
        if host.is_empty() || host.contains('@') || port == 0 {
            bail!("bad host in {s:?}");
        }
        Ok(Url {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    /// `reference` (absolute URL, absolute path or relative path) resolved against this URL.
    pub fn join(&self, reference: &str) -> Result<Url> {
        let r = reference.trim();
        if r.get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("http://"))
        {
            return Url::parse(r);
        }
        if r.contains("://") {
            bail!("unsupported URL {r:?}");
        }
        let path = if r.starts_with('/') {
            r.to_string()
        } else {
            let dir = self.path.rsplit_once('/').map_or("", |(d, _)| d);
            format!("{dir}/{r}")
        };
        Ok(Url {
            host: self.host.clone(),
            port: self.port,
            path,
        })
    }

    /// The Host header value.
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lower-cased) and values.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Splits `raw` at the end of the header block: (header text, body start), if it is there.
fn split_head(raw: &[u8]) -> Option<(&[u8], usize)> {
    if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
        return Some((&raw[..i], i + 4));
    }
    raw.windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (&raw[..i], i + 2))
}

/// Parses a status line and header lines (also used for SSDP replies).
pub fn parse_head(head: &[u8]) -> Result<(u16, Vec<(String, String)>)> {
    let text = std::str::from_utf8(head).context("HTTP head is not UTF-8")?;
    let mut lines = text.lines();
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x response: {:?}", truncate(status_line));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..1000).contains(s))
        .ok_or_else(|| anyhow!("bad status line {:?}", truncate(status_line)))?;
    let mut headers = Vec::new();
    for line in lines {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok((status, headers))
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Decodes a chunked body; `None` while it is incomplete, an error if it is malformed.
fn dechunk(mut b: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&b[..eol]).context("bad chunk size")?;
        let size_hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .ok()
            .filter(|&s| s <= MAX_RESPONSE)
            .ok_or_else(|| anyhow!("bad chunk size {:?}", truncate(line)))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        if b.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&b[..size]);
        if &b[size..size + 2] != b"\r\n" {
            bail!("chunk not followed by CRLF");
        }
        b = &b[size + 2..];
    }
}

/// Parses a whole response; `Ok(None)` if more bytes are needed (unless `eof`, when the body
/// runs to the end).
pub fn parse_response(raw: &[u8], eof: bool) -> Result<Option<Response>> {
    let Some((head, body_at)) = split_head(raw) else {
        if eof {
            bail!("connection closed before the end of the HTTP headers");
        }
        return Ok(None);
    };
    let (status, headers) = parse_head(head)?;
    let rest = &raw[body_at..];
    let chunked = header(&headers, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        match dechunk(rest)? {
            Some(b) => b,
            None if eof => bail!("connection closed inside a chunked body"),
            None => return Ok(None),
        }
    } else if let Some(len) = header(&headers, "content-length") {
        let len: usize = len
            .parse()
            .ok()
            .filter(|&l| l <= MAX_RESPONSE)
            .ok_or_else(|| anyhow!("bad Content-Length {:?}", truncate(len)))?;
        if rest.len() < len {
            if eof {
                bail!("connection closed after {} of {len} body bytes", rest.len());
            }
            return Ok(None);
        }
        rest[..len].to_vec()
    } else if eof {
        rest.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(Response {
        status,
        headers,
        body,
    }))
}

/// Sends one request and reads the response, all within `timeout`, reading at most
/// [`MAX_RESPONSE`] bytes.
pub async fn request(
    method: &str,
    url: &Url,
    extra_headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response> {
    tokio::time::timeout(timeout, request_inner(method, url, extra_headers, body))
        .await
        .map_err(|_| anyhow!("{method} http://{}{} timed out", url.authority(), url.path))?
}

async fn request_inner(
    method: &str,
    url: &Url,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response> {
    let mut stream = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .with_context(|| format!("connecting to {}", url.authority()))?;
    let mut req = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: tailgate\r\n",
        url.path,
        url.authority()
    );
    for (k, v) in extra_headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut out = req.into_bytes();
    out.extend_from_slice(body);
    stream
        .write_all(&out)
        .await
        .context("sending the request")?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .context("reading the response")?;
        if n == 0 {
            return parse_response(&raw, true)?.ok_or_else(|| anyhow!("incomplete HTTP response"));
        }
        if raw.len() + n > MAX_RESPONSE {
            bail!("HTTP response larger than {MAX_RESPONSE} bytes");
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(r) = parse_response(&raw, false)? {
            return Ok(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_join() {
        let u = Url::parse("http://192.168.5.1:34229/rootDesc.xml").unwrap();
        assert_eq!(
            u,
            Url {
                host: "192.168.5.1".into(),
                port: 34229,
                path: "/rootDesc.xml".into()
            }
        );
        assert_eq!(u.join("/ctl/IPConn").unwrap().path, "/ctl/IPConn");
        assert_eq!(u.join("ctl/IPConn").unwrap().path, "/ctl/IPConn");
        let deep = Url::parse("HTTP://10.0.0.1/a/b/desc.xml").unwrap();
        assert_eq!(deep.port, 80);
        assert_eq!(deep.join("ctl").unwrap().path, "/a/b/ctl");
        assert_eq!(
            deep.join("http://10.0.0.2:5000/x").unwrap().authority(),
            "10.0.0.2:5000"
        );
        assert_eq!(Url::parse("http://[fe80::1]:80/").unwrap().host, "fe80::1");
        for bad in [
            "https://x/",
            "http://",
            "http://:80/",
            "http://a:b/",
            "http://a:0/",
            "ftp://x",
            "",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
        assert!(u.join("https://elsewhere/").is_err());
    }

    #[test]
    fn responses_parse_with_length_chunks_or_eof() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhelloEXTRA",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(r.header("x-a"), Some("b"));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", false).unwrap(),
            None
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", true).is_err());
        let chunked =
            b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x\r\nde\r\n0\r\n\r\n";
        let r = parse_response(chunked, false).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_slice()), (500, &b"abcde"[..]));
        assert_eq!(parse_response(&chunked[..70], false).unwrap(), None);
        let r = parse_response(b"HTTP/1.0 200 OK\n\nbody to eof", true)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, b"body to eof");
    }

    #[test]
    fn junk_is_rejected() {
        assert!(parse_response(b"", true).is_err());
        assert!(parse_response(b"SSH-2.0-x\r\n\r\n", true).is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n", true).is_err());
        assert!(parse_response(b"HTTP/1.1 200\r\nContent-Length: -1\r\n\r\n", true).is_err());
        assert!(
            parse_response(b"HTTP/1.1 200\r\nContent-Length: 99999999999\r\n\r\n", true).is_err()
        );
        assert!(parse_response(
            b"HTTP/1.1 200\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            true
        )
        .is_err());
        assert!(parse_response(
            b"HTTP/1.1 200\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY0\r\n\r\n",
            true
        )
        .is_err());
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(
            b in proptest::collection::vec(proptest::num::u8::ANY, 0..256), eof: bool
        ) {
            let _ = parse_response(&b, eof);
        }

        #[test]
        fn random_bodies_never_panic(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..128),
            chunked: bool, eof: bool
        ) {
            let mut b = if chunked {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n".to_vec()
            };
            b.extend_from_slice(&body);
            let _ = parse_response(&b, eof);
        }

        #[test]
        fn random_urls_never_panic(s in "\\PC{0,40}", r in "\\PC{0,20}") {
            if let Ok(u) = Url::parse(&format!("http://{s}")) {
                let _ = u.join(&r);
            }
            let _ = Url::parse(&s);
        }
    }
}
