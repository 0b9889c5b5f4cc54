//! Clients for the lab's tests: SOCKS5 and HTTP CONNECT, a TCP echo server to reach through
//! them, and a plain HTTP GET (health and metrics endpoints). Blocking; the proxy clients run
//! inside a namespace with [`Netns::spawn_inside`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::Netns;

/// How long any read may wait.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// An echo server on `port` in `ns` for `conns` connections (each echoes until the client
/// closes); returns once it listens.
pub fn echo_server(
    ns: &Netns,
    port: u16,
    conns: usize,
) -> Result<std::thread::JoinHandle<Result<()>>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = ns.spawn_inside(move || -> Result<()> {
        let listener = TcpListener::bind(("0.0.0.0", port))?;
        ready_tx.send(()).ok();
        for _ in 0..conns {
            let (mut s, _) = listener.accept()?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n])?;
            }
        }
        Ok(())
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("echo server did not start listening")?;
    Ok(handle)
}

/// Sends `data` over `s` (then half-closes) while reading everything back.
pub fn echo_roundtrip(mut s: TcpStream, data: &[u8]) -> Result<Vec<u8>> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut writer = s.try_clone()?;
    let payload = data.to_vec();
    let w = std::thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&payload)?;
        writer.shutdown(std::net::Shutdown::Write)
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back)?;
    w.join().map_err(|_| anyhow!("writer panicked"))??;
    Ok(back)
}

/// A SOCKS5 CONNECT (no authentication, domain-name address) to `host:port` through the
/// proxy at `proxy`; the reply code (0 = success) and the stream.
pub fn socks5_connect(proxy: SocketAddr, host: &str, port: u16) -> Result<(u8, TcpStream)> {
    let mut s = TcpStream::connect(proxy).with_context(|| format!("connecting to {proxy}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(&[5, 1, 0])?;
    let mut m = [0u8; 2];
    s.read_exact(&mut m)?;
    if m != [5, 0] {
        bail!("SOCKS5 method reply {m:?}");
    }
    let len = u8::try_from(host.len()).context("host name too long")?;
    let mut req = vec![5, 1, 0, 3, len];
    req.extend_from_slice(host.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req)?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply)?;
    Ok((reply[1], s))
}

/// An HTTP CONNECT to `target` (`host:port`) through the proxy at `proxy`; the status line
/// and the stream.
pub fn http_connect(proxy: SocketAddr, target: &str) -> Result<(String, TcpStream)> {
    let mut s = TcpStream::connect(proxy).with_context(|| format!("connecting to {proxy}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        s.read_exact(&mut b)?;
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head);
    Ok((text.lines().next().unwrap_or_default().to_string(), s))
}

/// `GET path` (HTTP/1.0) to `addr` from inside `ns`: the status code and the whole reply.
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let path = path.to_string();
    ns.spawn_inside(move || -> Result<(u16, String)> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        let code = reply
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("bad reply {reply:?}"))?;
        Ok((code, reply))
    })?
    .join()
    .map_err(|_| anyhow!("request thread panicked"))?
}
