//! The STUN server beside the relay (`tailgate derp serve`): answers binding requests with
//! the address they came from; everything else is counted per reason and dropped.
//!
//! [`serve`] runs on a socket the caller bound; [`StunServer::bind`] binds (dual-stack for
//! `[::]`), spawns it and stops it on drop. Counters live in [`StunCounters`] (atomics, shared
//! with the task) and are read as a [`StunSnapshot`] or rendered for `/metrics`.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::codec::{binding_response, parse_binding_request, ParseError};

/// Largest datagram read; anything longer is truncated by the kernel and then fails the length
/// check (counted as `bad_length`).
const RECV_BUF: usize = 2048;

/// What the server did with the datagrams it received (shared with the serving task).
#[derive(Debug, Default)]
pub struct StunCounters {
    /// Binding requests from IPv4 clients (or IPv4-mapped on a dual-stack socket), answered.
    pub answered_v4: AtomicU64,
    /// Binding requests from IPv6 clients, answered.
    pub answered_v6: AtomicU64,
    /// Datagrams dropped, indexed by [`ParseError::index`].
    pub dropped: [AtomicU64; ParseError::ALL.len()],
    /// Answers the kernel refused to send.
    pub send_errors: AtomicU64,
}

/// A copy of [`StunCounters`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StunSnapshot {
    /// Binding requests from IPv4 clients answered.
    pub answered_v4: u64,
    /// Binding requests from IPv6 clients answered.
    pub answered_v6: u64,
    /// Dropped: shorter than a STUN header.
    pub dropped_too_short: u64,
    /// Dropped: not STUN (type bits or magic cookie).
    pub dropped_not_stun: u64,
    /// Dropped: STUN, but not a binding request.
    pub dropped_not_binding_request: u64,
    /// Dropped: length field does not match the datagram.
    pub dropped_bad_length: u64,
    /// Dropped: an attribute runs past the end.
    pub dropped_bad_attribute: u64,
    /// Dropped: wrong or misplaced FINGERPRINT.
    pub dropped_bad_fingerprint: u64,
    /// Answers that could not be sent.
    pub send_errors: u64,
}

impl StunSnapshot {
    /// Binding requests answered, both families.
    pub fn answered(&self) -> u64 {
        self.answered_v4 + self.answered_v6
    }

    /// Datagrams dropped, all reasons.
    pub fn dropped(&self) -> u64 {
        ParseError::ALL.iter().map(|&e| self.dropped_for(e)).sum()
    }

    /// Datagrams dropped for `reason`.
    pub fn dropped_for(&self, reason: ParseError) -> u64 {
        match reason {
            ParseError::TooShort => self.dropped_too_short,
            ParseError::NotStun => self.dropped_not_stun,
            ParseError::NotBindingRequest => self.dropped_not_binding_request,
            ParseError::BadLength => self.dropped_bad_length,
            ParseError::BadAttribute => self.dropped_bad_attribute,
            ParseError::BadFingerprint => self.dropped_bad_fingerprint,
        }
    }
}

impl StunCounters {
    /// The counters now.
    pub fn snapshot(&self) -> StunSnapshot {
        let d = |e: ParseError| self.dropped[e.index()].load(Relaxed);
        StunSnapshot {
            answered_v4: self.answered_v4.load(Relaxed),
            answered_v6: self.answered_v6.load(Relaxed),
            dropped_too_short: d(ParseError::TooShort),
            dropped_not_stun: d(ParseError::NotStun),
            dropped_not_binding_request: d(ParseError::NotBindingRequest),
            dropped_bad_length: d(ParseError::BadLength),
            dropped_bad_attribute: d(ParseError::BadAttribute),
            dropped_bad_fingerprint: d(ParseError::BadFingerprint),
            send_errors: self.send_errors.load(Relaxed),
        }
    }

    /// Prometheus families of these counters (`tailgate_stun_packets_total{outcome}` and
    /// `tailgate_stun_send_errors_total`).
    pub fn render(&self) -> String {
        let s = self.snapshot();
        let mut out = String::new();
        let name = "tailgate_stun_packets_total";
        let mut f = crate::metrics::Family::new(
            &mut out,
            name,
            "counter",
            "STUN datagrams handled by the userspace server by outcome: binding requests \
             answered (per address family), or dropped (per reason).",
        );
        f.sample(name, &[("outcome", "answered_v4")], s.answered_v4);
        f.sample(name, &[("outcome", "answered_v6")], s.answered_v6);
        for e in ParseError::ALL {
            let outcome = format!("dropped_{}", e.name());
            f.sample(name, &[("outcome", &outcome)], s.dropped_for(e));
        }
        let name = "tailgate_stun_send_errors_total";
        crate::metrics::Family::new(
            &mut out,
            name,
            "counter",
            "STUN answers the kernel refused to send.",
        )
        .sample(name, &[], s.send_errors);
        out
    }
}

/// The answer to one datagram from `from` (None: dropped), counted in `counters`.
pub fn answer(datagram: &[u8], from: SocketAddr, counters: &StunCounters) -> Option<Vec<u8>> {
    match parse_binding_request(datagram) {
        Ok(req) => {
            let from = crate::io::udp::canonical(from);
            if from.is_ipv4() {
                counters.answered_v4.fetch_add(1, Relaxed);
            } else {
                counters.answered_v6.fetch_add(1, Relaxed);
            }
            Some(binding_response(&req.txid, from))
        }
        Err(e) => {
            counters.dropped[e.index()].fetch_add(1, Relaxed);
            None
        }
    }
}

/// Serves binding requests on `socket` until the task is dropped or aborted. Receive errors
/// (e.g. ICMP errors reported on the socket) are skipped.
pub async fn serve(socket: UdpSocket, counters: Arc<StunCounters>) {
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                log::debug!("STUN socket: {e}");
                continue;
            }
        };
        if let Some(reply) = answer(&buf[..n], from, &counters) {
            if let Err(e) = socket.send_to(&reply, from).await {
                counters.send_errors.fetch_add(1, Relaxed);
                log::debug!("STUN answer to {from}: {e}");
            }
        }
    }
}

/// Binds a UDP socket on `addr`; `[::]` (the unspecified IPv6 address) also receives IPv4.
pub fn bind_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(!addr.ip().is_unspecified())?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// A running STUN server; dropping it stops the task and closes the socket.
#[derive(Debug)]
pub struct StunServer {
    local_addr: SocketAddr,
    counters: Arc<StunCounters>,
    task: JoinHandle<()>,
}

impl StunServer {
    /// Binds `addr` (port 0 picks one; [`super::codec::DEFAULT_PORT`] is the usual) and
    /// serves on it in a task of the current tokio runtime.
    pub async fn bind(addr: SocketAddr) -> io::Result<StunServer> {
        let socket = bind_socket(addr)?;
        let local_addr = socket.local_addr()?;
        let counters = Arc::new(StunCounters::default());
        let task = tokio::spawn(serve(socket, counters.clone()));
        log::info!("STUN server on {local_addr}");
        Ok(StunServer {
            local_addr,
            counters,
            task,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The live counters (for `/metrics`).
    pub fn counters(&self) -> Arc<StunCounters> {
        self.counters.clone()
    }

    /// The counters now.
    pub fn snapshot(&self) -> StunSnapshot {
        self.counters.snapshot()
    }
}

impl Drop for StunServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::codec::{binding_request, parse_binding_response};
    use std::time::Duration;

    async fn exchange(client: &UdpSocket, server: SocketAddr, msg: &[u8]) -> Vec<u8> {
        client.send_to(msg, server).await.unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .expect("no STUN answer within 5 s")
            .unwrap();
        buf[..n].to_vec()
    }

    #[tokio::test]
    async fn answers_binding_requests_and_counts_junk() {
        let server = StunServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.local_addr();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tx = [9u8; 12];
        let mut wrong_cookie = binding_request(&tx);
        wrong_cookie[5] ^= 1;
        let mut oversized = binding_request(&tx);
        oversized[3] = 200;
        let junk: [&[u8]; 5] = [
            b"hello",
            &[0u8; 64],
            &binding_response(&[1; 12], addr),
            &wrong_cookie,
            &oversized,
        ];
        for j in junk {
            client.send_to(j, addr).await.unwrap();
        }
        let answer = exchange(&client, addr, &binding_request(&tx)).await;
        assert_eq!(
            parse_binding_response(&answer, &tx),
            Ok(client.local_addr().unwrap())
        );
        let s = server.snapshot();
        assert_eq!(s.answered_v4, 1);
        assert_eq!(s.dropped_too_short, 1);
        assert_eq!(s.dropped_not_stun, 2);
        assert_eq!(s.dropped_not_binding_request, 1);
        assert_eq!(s.dropped_bad_length, 1);
        assert_eq!(s.dropped(), 5);
        let text = server.counters().render();
        assert!(
            text.contains("tailgate_stun_packets_total{outcome=\"answered_v4\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("tailgate_stun_packets_total{outcome=\"dropped_not_stun\"} 2\n"));
    }

    #[tokio::test]
    async fn dual_stack_socket_answers_v4_clients_with_v4_addresses() {
        let Ok(server) = StunServer::bind("[::]:0".parse().unwrap()).await else {
            // No IPv6 in this environment: nothing to test.
            return;
        };
        let port = server.local_addr().port();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tx = [4u8; 12];
        let server_v4: SocketAddr = ([127, 0, 0, 1], port).into();
        let answer = exchange(&client, server_v4, &binding_request(&tx)).await;
        assert_eq!(
            parse_binding_response(&answer, &tx),
            Ok(client.local_addr().unwrap())
        );
        assert_eq!(server.snapshot().answered_v4, 1);
    }
}
