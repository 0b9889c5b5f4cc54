//! The proxies of userspace networking: SOCKS5 (RFC 1928, no authentication, CONNECT) and
//! HTTP (`CONNECT host:port`, and plain requests in absolute form). Destinations the tailnet
//! routes (peers' addresses and their subnet routes; peers' names, bare or under the tailnet
//! domain)
//! go through the userspace stack and the tunnel (with a kernel TUN, through the kernel, whose
//! routes lead into the tunnel); anything else is dialled from the host, as Tailscale's
//! proxies do.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use tokio::sync::watch;

use super::{Netstack, StackConn};
use crate::device::Device;
use crate::dns::DnsView;

/// How long a client may take to send its request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest HTTP request head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// Where a proxied connection goes.
pub enum Upstream {
    /// Through the tunnel.
    Tailnet(StackConn),
    /// From the host.
    Direct(TcpStream),
}

/// Resolves names and picks the way for each destination.
#[derive(Clone)]
pub struct Dialer {
    /// The userspace stack; `None` with a kernel TUN (whose routes reach the tailnet).
    stack: Option<Netstack>,
    dev: Arc<Device>,
    /// The tailnet's names (the MagicDNS view).
    names: watch::Receiver<DnsView>,
}

impl Dialer {
    /// A dialer that routes by `dev`'s peers, through `stack` in userspace networking, and
    /// knows the tailnet's `names`.
    pub fn new(
        stack: Option<Netstack>,
        dev: Arc<Device>,
        names: watch::Receiver<DnsView>,
    ) -> Dialer {
        Dialer { stack, dev, names }
    }

    /// The address of a tailnet name: `host` bare, or `host.<tailnet domain>`. Other names
    /// are not the tailnet's, whatever their first label.
    fn tailnet_address(&self, name: &str, want_v4: bool) -> Option<IpAddr> {
        let view = self.names.borrow();
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let suffix = format!(".{}", view.domain);
        let label = match name.strip_suffix(&suffix) {
            Some(label) if !view.domain.is_empty() => label,
            _ if !name.contains('.') => name.as_str(),
            _ => return None,
        };
        let found = view
            .hosts()
            .find(|h| h.name.eq_ignore_ascii_case(label))
            .and_then(|h| h.addrs.iter().copied().find(|a| a.is_ipv4() == want_v4));
        found
    }

    fn routed(&self, ip: IpAddr) -> bool {
        self.dev.state().routes.lookup(ip).is_some()
    }

    /// Opens a connection to `host:port`.
    pub async fn dial(&self, host: &str, port: u16) -> io::Result<Upstream> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip = match host.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => self
                .tailnet_address(host, true)
                .or_else(|| self.tailnet_address(host, false)),
        };
        match (ip, &self.stack) {
            (Some(ip), Some(stack)) if self.routed(ip) => stack
                .connect(SocketAddr::new(ip, port))
                .await
                .map(Upstream::Tailnet),
            (Some(ip), _) => TcpStream::connect(SocketAddr::new(ip, port))
                .await
                .map(Upstream::Direct),
            (None, _) => TcpStream::connect((host, port)).await.map(Upstream::Direct),
        }
    }
}

/// Copies bytes both ways until both directions have ended.
pub async fn splice(client: TcpStream, upstream: Upstream) -> io::Result<()> {
    match upstream {
        Upstream::Direct(mut up) => {
            let mut client = client;
            tokio::io::copy_bidirectional(&mut client, &mut up).await?;
            Ok(())
        }
        Upstream::Tailnet(conn) => {
            let StackConn { tx, mut rx } = conn;
            let (mut cr, mut cw) = client.into_split();
            let up = async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    let n = cr.read(&mut buf).await?;
                    if n == 0 {
                        tx.finish();
                        return Ok::<_, io::Error>(());
                    }
                    tx.send(&buf[..n]).await?;
                }
            };
            let down = async move {
                while let Some(data) = rx.recv().await {
                    cw.write_all(&data).await?;
                }
                cw.shutdown().await?;
                drop(rx);
                Ok::<_, io::Error>(())
            };
            let (a, b) = tokio::join!(up, down);
            a.and(b)
        }
    }
}

/// Serves SOCKS5 on `listener` until the task is dropped.
pub async fn serve_socks5(listener: TcpListener, dialer: Dialer) {
    serve(listener, dialer, "SOCKS5", |client, dialer| async move {
        socks5(client, &dialer).await
    })
    .await
}

/// Accepts clients and runs `handle` for each in its own task.
async fn serve<F, Fut>(listener: TcpListener, dialer: Dialer, what: &'static str, handle: F)
where
    F: Fn(TcpStream, Dialer) -> Fut,
    Fut: std::future::Future<Output = io::Result<()>> + Send + 'static,
{
    loop {
        let Ok((client, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let work = handle(client, dialer.clone());
        tokio::spawn(async move {
            if let Err(e) = work.await {
                log::debug!("{what} proxy client {peer}: {e}");
            }
        });
    }
}

/// SOCKS5 reply codes.
const REP_OK: u8 = 0;
const REP_FAILURE: u8 = 1;
const REP_HOST_UNREACHABLE: u8 = 4;
const REP_REFUSED: u8 = 5;
const REP_COMMAND: u8 = 7;
const REP_ADDRESS: u8 = 8;

async fn socks5(mut client: TcpStream, dialer: &Dialer) -> io::Result<()> {
    let target = tokio::time::timeout(HANDSHAKE_TIMEOUT, socks5_request(&mut client))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "SOCKS5 handshake timed out"))?;
    let (host, port) = match target {
        Ok(t) => t,
        Err(code) => {
            socks5_reply(&mut client, code).await?;
            return Ok(());
        }
    };
    match dialer.dial(&host, port).await {
        Ok(up) => {
            socks5_reply(&mut client, REP_OK).await?;
            splice(client, up).await
        }
        Err(e) => {
            let code = match e.kind() {
                io::ErrorKind::ConnectionRefused => REP_REFUSED,
                io::ErrorKind::AddrNotAvailable | io::ErrorKind::NotFound => REP_HOST_UNREACHABLE,
                _ => REP_FAILURE,
            };
            socks5_reply(&mut client, code).await?;
            Err(e)
        }
    }
}

/// Reads the greeting and the request; `Err(code)` for a request to refuse.
async fn socks5_request(client: &mut TcpStream) -> Result<(String, u16), u8> {
    let bad = |_| REP_FAILURE;
    let mut head = [0u8; 2];
    client.read_exact(&mut head).await.map_err(bad)?;
    if head[0] != 5 {
        return Err(REP_FAILURE);
    }
    let mut methods = vec![0u8; usize::from(head[1])];
    client.read_exact(&mut methods).await.map_err(bad)?;
    if !methods.contains(&0) {
        let _ = client.write_all(&[5, 0xff]).await;
        return Err(REP_FAILURE);
    }
    client.write_all(&[5, 0]).await.map_err(bad)?;
    let mut req = [0u8; 4];
    client.read_exact(&mut req).await.map_err(bad)?;
    if req[0] != 5 {
        return Err(REP_FAILURE);
    }
    if req[1] != 1 {
        return Err(REP_COMMAND);
    }
    let host = match req[3] {
        1 => {
            let mut a = [0u8; 4];
            client.read_exact(&mut a).await.map_err(bad)?;
            Ipv4Addr::from(a).to_string()
        }
        3 => {
            let mut len = [0u8; 1];
            client.read_exact(&mut len).await.map_err(bad)?;
            let mut name = vec![0u8; usize::from(len[0])];
            client.read_exact(&mut name).await.map_err(bad)?;
            String::from_utf8(name).map_err(|_| REP_ADDRESS)?
        }
        4 => {
            let mut a = [0u8; 16];
            client.read_exact(&mut a).await.map_err(bad)?;
            Ipv6Addr::from(a).to_string()
        }
        _ => return Err(REP_ADDRESS),
    };
    let mut port = [0u8; 2];
    client.read_exact(&mut port).await.map_err(bad)?;
    Ok((host, u16::from_be_bytes(port)))
}

async fn socks5_reply(client: &mut TcpStream, code: u8) -> io::Result<()> {
    client.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await
}

/// Serves the HTTP proxy on `listener` until the task is dropped.
pub async fn serve_http(listener: TcpListener, dialer: Dialer) {
    serve(listener, dialer, "HTTP", |client, dialer| async move {
        http_proxy(client, &dialer).await
    })
    .await
}

/// The parts of an HTTP proxy request.
#[derive(Debug, PartialEq, Eq)]
pub struct ProxyRequest {
    /// `CONNECT` (tunnel) or another method (forwarded).
    pub connect: bool,
    /// Host to reach.
    pub host: String,
    /// Port to reach.
    pub port: u16,
    /// For forwarded requests: the head to send upstream (origin-form request line).
    pub head: Vec<u8>,
}

/// Parses a request head (up to and including the blank line).
pub fn parse_proxy_request(head: &str) -> Result<ProxyRequest, &'static str> {
    let mut lines = head.split("\r\n");
    let first = lines.next().ok_or("empty request")?;
    let mut parts = first.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) if v.starts_with("HTTP/") => (m, t, v),
        _ => return Err("malformed request line"),
    };
    let split_port = |hp: &str, default: u16| -> Result<(String, u16), &'static str> {
        if let Some(rest) = hp.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or("bad IPv6 host")?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| "bad port")?,
                None => default,
            };
            return Ok((h.to_string(), port));
        }
        match hp.rsplit_once(':') {
            Some((h, p)) => Ok((h.to_string(), p.parse().map_err(|_| "bad port")?)),
            None => Ok((hp.to_string(), default)),
        }
    };
    if method == "CONNECT" {
        let (host, port) = split_port(target, 443)?;
        return Ok(ProxyRequest {
            connect: true,
            host,
            port,
            head: Vec::new(),
        });
    }
    let rest = target
        .strip_prefix("http://")
        .ok_or("only CONNECT and http:// URLs can be proxied")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = split_port(authority, 80)?;
    // One request per connection: the bytes after it are spliced to this upstream, so the
    // client must not send the next request (perhaps for another host) on it.
    let mut out = format!("{method} {path} {version}\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if name.starts_with("proxy-") || name == "connection" || name == "keep-alive" {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    Ok(ProxyRequest {
        connect: false,
        host,
        port,
        head: out.into_bytes(),
    })
}

async fn http_proxy(client: TcpStream, dialer: &Dialer) -> io::Result<()> {
    let mut reader = BufReader::new(client);
    let mut head = Vec::new();
    let read_head = async {
        loop {
            // At most MAX_HEAD bytes in all, even on one endless line.
            let room = (MAX_HEAD + 1).saturating_sub(head.len()) as u64;
            let n = (&mut reader)
                .take(room)
                .read_until(b'\n', &mut head)
                .await?;
            if n == 0 || head.ends_with(b"\r\n\r\n") || head.len() > MAX_HEAD {
                return Ok::<_, io::Error>(());
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, read_head)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request head timed out"))??;
    let head = String::from_utf8_lossy(&head);
    let req = match parse_proxy_request(&head) {
        Ok(r) => r,
        Err(why) => {
            let msg = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{why}",
                why.len()
            );
            reader.get_mut().write_all(msg.as_bytes()).await?;
            return Ok(());
        }
    };
    let upstream = match dialer.dial(&req.host, req.port).await {
        Ok(u) => u,
        Err(e) => {
            let why = e.to_string();
            let msg = format!(
                "HTTP/1.1 502 Bad Gateway\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{why}",
                why.len()
            );
            reader.get_mut().write_all(msg.as_bytes()).await?;
            return Ok(());
        }
    };
    // Bytes the client sent after the head (already buffered) go first.
    let early = reader.buffer().to_vec();
    let mut client = reader.into_inner();
    let mut first = Vec::new();
    if req.connect {
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
    } else {
        first.extend_from_slice(&req.head);
    }
    first.extend_from_slice(&early);
    let upstream = match upstream {
        Upstream::Tailnet(conn) => {
            if !first.is_empty() {
                conn.tx.send(&first).await?;
            }
            Upstream::Tailnet(conn)
        }
        Upstream::Direct(mut s) => {
            s.write_all(&first).await?;
            Upstream::Direct(s)
        }
    };
    splice(client, upstream).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_requests() {
        let r = parse_proxy_request("CONNECT peer.tailnet.internal:22 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(
            (r.connect, r.host.as_str(), r.port),
            (true, "peer.tailnet.internal", 22)
        );
        let r = parse_proxy_request("CONNECT [fd7a:115c:a1e0::2]:443 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((r.host.as_str(), r.port), ("fd7a:115c:a1e0::2", 443));
        let r = parse_proxy_request(
            "GET http://100.64.0.2:8080/a?b HTTP/1.1\r\nHost: 100.64.0.2:8080\r\nProxy-Connection: keep-alive\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (r.connect, r.host.as_str(), r.port),
            (false, "100.64.0.2", 8080)
        );
        assert_eq!(
            String::from_utf8(r.head).unwrap(),
            "GET /a?b HTTP/1.1\r\nHost: 100.64.0.2:8080\r\nConnection: close\r\n\r\n"
        );
        let r = parse_proxy_request("GET http://peer HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!((r.host.as_str(), r.port), ("peer", 80));
        for bad in [
            "",
            "GET / HTTP/1.1\r\n\r\n",
            "CONNECT x:y HTTP/1.1\r\n\r\n",
            "junk\r\n\r\n",
        ] {
            assert!(parse_proxy_request(bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "(?s).{0,200}") {
            let _ = parse_proxy_request(&s);
        }
    }
}
