//! STUN client: asks a server which address and port it sees a socket as (`tailgate netcheck`,
//! a node's public endpoint).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::codec::{binding_request, parse_binding_response, ResponseError, TxId};

/// First retransmission timeout; it doubles after every retransmission (RFC 5389 §7.2.1 uses
/// 500 ms for the open Internet; a probe wants an answer sooner).
pub const INITIAL_RTO: Duration = Duration::from_millis(100);
/// Most requests sent per [`binding`] call (the first and up to 6 retransmissions).
pub const MAX_SENDS: u32 = 7;
/// Longest wait between two sends.
const MAX_RTO: Duration = Duration::from_millis(1600);
/// Most datagrams [`binding`] reads and ignores (other traffic, stale answers) per call.
const MAX_IGNORED: u32 = 1024;

/// Why [`binding`] got no address.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer from the server within the timeout.
    #[error("no STUN answer from {server} within {timeout:?} ({sent} requests sent)")]
    Timeout {
        /// The server asked.
        server: SocketAddr,
        /// The timeout given.
        timeout: Duration,
        /// Requests sent.
        sent: u32,
    },
    /// The server answered with an error or without an address.
    #[error("STUN server {server}: {error}")]
    Server {
        /// The server asked.
        server: SocketAddr,
        /// What it answered.
        error: ResponseError,
    },
    /// Sending or receiving failed.
    #[error("STUN request to {server}: {source}")]
    Io {
        /// The server asked.
        server: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The socket read nothing but unrelated datagrams for too long.
    #[error("STUN request to {server}: gave up after {MAX_IGNORED} unrelated datagrams")]
    Flooded {
        /// The server asked.
        server: SocketAddr,
    },
}

/// A fresh random transaction id.
pub fn new_txid() -> TxId {
    let mut t = [0u8; 12];
    OsRng.fill_bytes(&mut t);
    t
}

/// The address to send to from `socket`: an IPv4 server is reached from a dual-stack IPv6
/// socket through its IPv4-mapped address.
fn destination(socket: &UdpSocket, server: SocketAddr) -> SocketAddr {
    match (socket.local_addr(), server.ip()) {
        (Ok(SocketAddr::V6(_)), IpAddr::V4(v4)) => {
            SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), server.port())
        }
        _ => server,
    }
}

/// Sends a binding request from `socket` to `server` and returns the address the server saw
/// it come from (the socket's public address behind a NAT).
///
/// Retransmits after 100 ms, then 200, 400, 800, 1600, 1600 ms (at most [`MAX_SENDS`]
/// requests, one transaction id) until an answer arrives or `timeout` passes. Datagrams from
/// other addresses, other transactions or that are not STUN are read and ignored, so the
/// socket should not be one whose other traffic matters while this runs. Answers without
/// FINGERPRINT are accepted.
pub async fn binding(
    socket: &UdpSocket,
    server: SocketAddr,
    timeout: Duration,
) -> Result<SocketAddr, ClientError> {
    let txid = new_txid();
    let request = binding_request(&txid);
    let dest = destination(socket, server);
    let want = crate::io::udp::canonical(dest);
    let deadline = Instant::now() + timeout;
    let io_err = |source| ClientError::Io { server, source };

    let mut sent = 0u32;
    let mut rto = INITIAL_RTO;
    let mut next_send = Instant::now();
    let mut ignored = 0u32;
    let mut buf = [0u8; 1500];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(ClientError::Timeout {
                server,
                timeout,
                sent,
            });
        }
        if now >= next_send && sent < MAX_SENDS {
            socket.send_to(&request, dest).await.map_err(io_err)?;
            sent += 1;
            next_send = now + rto;
            rto = (rto * 2).min(MAX_RTO);
        }
        let wake = if sent < MAX_SENDS {
            next_send.min(deadline)
        } else {
            deadline
        };
        let (n, from) = match tokio::time::timeout_at(wake, socket.recv_from(&mut buf)).await {
            Err(_elapsed) => continue,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                // An ICMP port unreachable from an earlier send: keep trying until the timeout
                // (the server may be starting).
                continue;
            }
            Ok(r) => r.map_err(io_err)?,
        };
        if crate::io::udp::canonical(from) != want {
            ignored += 1;
        } else {
            match parse_binding_response(&buf[..n], &txid) {
                Ok(addr) => return Ok(addr),
                Err(error @ (ResponseError::ErrorResponse(..) | ResponseError::NoAddress)) => {
                    return Err(ClientError::Server { server, error })
                }
                Err(_) => ignored += 1,
            }
        }
        if ignored >= MAX_IGNORED {
            return Err(ClientError::Flooded { server });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::server::StunServer;

    #[tokio::test]
    async fn learns_its_address_from_the_server() {
        let server = StunServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let got = binding(&socket, server.local_addr(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got, socket.local_addr().unwrap());
        assert_eq!(server.snapshot().answered_v4, 1);
    }

    #[tokio::test]
    async fn retransmits_until_the_server_answers() {
        // A "server" that ignores the first two requests and answers the third.
        let raw = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = raw.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            for i in 0..3 {
                let (n, from) = raw.recv_from(&mut buf).await.unwrap();
                let req = crate::stun::codec::parse_binding_request(&buf[..n]).unwrap();
                if i == 2 {
                    let r = crate::stun::codec::binding_response(&req.txid, from);
                    raw.send_to(&r, from).await.unwrap();
                }
            }
        });
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let started = Instant::now();
        let got = binding(&socket, addr, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got, socket.local_addr().unwrap());
        // Sent at 0, 100 and 300 ms.
        assert!(started.elapsed() >= Duration::from_millis(290));
        task.await.unwrap();
    }

    #[tokio::test]
    async fn times_out_with_a_bounded_number_of_requests() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let started = Instant::now();
        let err = binding(
            &socket,
            silent.local_addr().unwrap(),
            Duration::from_millis(400),
        )
        .await
        .unwrap_err();
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(2));
        match err {
            ClientError::Timeout { sent, .. } => assert_eq!(sent, 3, "0, 100, 300 ms"),
            other => panic!("{other}"),
        }
        // Nothing but requests reached the silent socket.
        let mut buf = [0u8; 64];
        let (n, _) = silent.recv_from(&mut buf).await.unwrap();
        assert!(crate::stun::codec::parse_binding_request(&buf[..n]).is_ok());
    }

    #[tokio::test]
    async fn ignores_foreign_datagrams_and_reports_error_answers() {
        let raw = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = raw.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let (n, from) = raw.recv_from(&mut buf).await.unwrap();
            let req = crate::stun::codec::parse_binding_request(&buf[..n]).unwrap();
            // Junk first, then an answer to another transaction, then an error answer.
            raw.send_to(b"junk", from).await.unwrap();
            let other = crate::stun::codec::binding_response(&[0; 12], from);
            raw.send_to(&other, from).await.unwrap();
            let mut err = vec![0x01, 0x11, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
            err.extend_from_slice(&req.txid);
            err.extend_from_slice(&[0x00, 0x09, 0x00, 0x04, 0, 0, 5, 0]);
            raw.send_to(&err, from).await.unwrap();
        });
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let err = binding(&socket, addr, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Server {
                    error: ResponseError::ErrorResponse(500, _),
                    ..
                }
            ),
            "{err}"
        );
        task.await.unwrap();
    }
}
